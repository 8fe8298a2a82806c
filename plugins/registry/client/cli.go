package client

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/plugins/registry/wire"
)

// Command is one `pc2 name` subcommand, described so that cmd/pc2 can
// mount it in its own command tree: it binds Flags on its flag set and
// calls Run with the remaining arguments.
type Command struct {
	Name    string
	Args    string // synopsis of positional arguments
	Summary string
	Flags   func(fs *flag.FlagSet)
	Run     func(ctx context.Context, out io.Writer, args []string) error
}

// ErrUsage wraps errors about the command line (exit status 2).
var ErrUsage = errors.New("usage")

// DefaultRegistry is the API used when neither --registry nor
// $PC2_REGISTRY is set: a supernode on this machine (the devnet).
const DefaultRegistry = "http://127.0.0.1:39002"

// Commands returns register, list, show and delete. key loads the
// node's identity (the owner of the names).
func Commands(key func() (*identity.KeyPair, error)) []*Command {
	var api string
	registryFlag := func(fs *flag.FlagSet) {
		def := os.Getenv("PC2_REGISTRY")
		if def == "" {
			def = DefaultRegistry
		}
		fs.StringVar(&api, "registry", def, "supernode registration API URL (env PC2_REGISTRY)")
	}
	newClient := func() (*Client, error) {
		kp, err := key()
		if err != nil {
			return nil, err
		}
		return &Client{BaseURL: api, Key: kp}, nil
	}
	var reg Registration
	var owner string
	var viaTunnel bool
	return []*Command{
		{
			Name: "register", Args: "<name>", Summary: "register a name, or renew and update one of yours",
			Flags: func(fs *flag.FlagSet) {
				registryFlag(fs)
				fs.StringVar(&reg.Target, "target", "", `IP:port of this node's TLS service, or "tunnel" (one of --target, --tunnel is required)`)
				fs.BoolVar(&viaTunnel, "tunnel", false, "serve the name only through this node's tunnel to the supernode (target \"tunnel\"; for nodes behind NAT)")
				fs.StringVar(&reg.HTTP, "http", "", `IP:port of this node's plain HTTP service, or "tunnel" (optional)`)
				fs.BoolVar(&reg.RedirectHTTPS, "redirect-https", false, "answer http:// with a redirect to https://")
				fs.BoolVar(&reg.DNSDirect, "dns-direct", false, "DNS answers with this node's address instead of the supernode's")
			},
			Run: func(ctx context.Context, out io.Writer, args []string) error {
				if viaTunnel && reg.Target != "" && reg.Target != wire.TargetTunnel {
					return fmt.Errorf("%w: --tunnel and --target %s contradict each other", ErrUsage, reg.Target)
				}
				if viaTunnel {
					reg.Target = wire.TargetTunnel
				}
				if len(args) != 1 || reg.Target == "" {
					return fmt.Errorf("%w: register needs one name and --target or --tunnel", ErrUsage)
				}
				c, err := newClient()
				if err != nil {
					return err
				}
				r := reg
				r.Name = args[0]
				rec, err := c.Register(ctx, r)
				if err != nil {
					return err
				}
				fmt.Fprintf(out, "%s → %s, expires %s\n", rec.Name, rec.Target, time.Unix(rec.Expires, 0).UTC().Format(time.RFC3339))
				return nil
			},
		},
		{
			Name: "list", Summary: "list the names of this node (or of --owner)",
			Flags: func(fs *flag.FlagSet) {
				registryFlag(fs)
				fs.StringVar(&owner, "owner", "", "list another id's names")
			},
			Run: func(ctx context.Context, out io.Writer, args []string) error {
				if len(args) != 0 {
					return fmt.Errorf("%w: list takes no arguments", ErrUsage)
				}
				var id identity.ID
				c := &Client{BaseURL: api}
				if owner != "" {
					var err error
					if id, err = identity.ParseID(owner); err != nil {
						return err
					}
				} else {
					cl, err := newClient()
					if err != nil {
						return err
					}
					c, id = cl, cl.Key.ID()
				}
				recs, err := c.List(ctx, id)
				if err != nil {
					return err
				}
				printRecords(out, recs)
				return nil
			},
		},
		{
			Name: "show", Args: "<name>", Summary: "show a name's record",
			Flags: registryFlag,
			Run: func(ctx context.Context, out io.Writer, args []string) error {
				if len(args) != 1 {
					return fmt.Errorf("%w: show needs one name", ErrUsage)
				}
				rec, err := (&Client{BaseURL: api}).Get(ctx, args[0])
				if err != nil {
					return err
				}
				printRecords(out, []wire.Record{*rec})
				fmt.Fprintf(out, "owner: %s\n", rec.Owner.DID())
				return nil
			},
		},
		{
			Name: "delete", Args: "<name>", Summary: "free one of your names",
			Flags: registryFlag,
			Run: func(ctx context.Context, out io.Writer, args []string) error {
				if len(args) != 1 {
					return fmt.Errorf("%w: delete needs one name", ErrUsage)
				}
				c, err := newClient()
				if err != nil {
					return err
				}
				if err := c.Delete(ctx, args[0]); err != nil {
					return err
				}
				fmt.Fprintf(out, "%s deleted\n", NormalName(args[0]))
				return nil
			},
		},
	}
}

func printRecords(out io.Writer, recs []wire.Record) {
	if len(recs) == 0 {
		fmt.Fprintln(out, "no names")
		return
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tTARGET\tHTTP\tEXPIRES")
	for _, r := range recs {
		httpEP := r.HTTP
		if r.RedirectHTTPS {
			httpEP += " (redirect)"
		}
		if httpEP == "" {
			httpEP = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.Name, r.Target, httpEP, time.Unix(r.Expires, 0).UTC().Format(time.RFC3339))
	}
	tw.Flush()
}
