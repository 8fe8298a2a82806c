package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/elacity/pc2/core/config"
	"github.com/elacity/pc2/core/host"
	fedmesh "github.com/elacity/pc2/federation/mesh"
)

// supernodeStatusCommand is `pc2 supernode status`: the mesh as the
// running supernode sees it, read from its loopback status endpoint
// (advertised in the run file of its data directory).
func supernodeStatusCommand() *command {
	var cfgPath, data, url string
	var asJSON bool
	return &command{
		name:    "status",
		summary: "show a running supernode's mesh: peers, health, names routed, tunnels held",
		flags: func(fs *flag.FlagSet) {
			fs.StringVar(&cfgPath, "config", "", "the supernode's configuration file (to find its data directory)")
			fs.StringVar(&data, "data", "", "the supernode's data directory (overrides the file)")
			fs.StringVar(&url, "url", "", "status URL (default: read from the run file)")
			fs.BoolVar(&asJSON, "json", false, "print the raw JSON")
		},
		run: func(ctx context.Context, std *stdio, _ *flag.FlagSet, args []string) error {
			if err := noArgs(args); err != nil {
				return err
			}
			if url == "" {
				if data == "" {
					var sections []string
					for _, s := range roleSupernode.services() {
						sections = append(sections, s.Name())
					}
					cfg, err := config.Load(cfgPath, config.RoleSupernode, false, sections)
					if err != nil {
						return err
					}
					data = cfg.DataDir
				}
				info, err := host.ReadRunFile(data)
				if err != nil {
					return fmt.Errorf("is the supernode running? %w", err)
				}
				if url = info.Extra["mesh.status"]; url == "" {
					return fmt.Errorf("the supernode in %s serves no mesh status (mesh.statusListen off?)", data)
				}
			}
			ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
			if err != nil {
				return err
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
			if err != nil {
				return err
			}
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("%s: %s", url, resp.Status)
			}
			if asJSON {
				_, err := std.out.Write(body)
				return err
			}
			var st fedmesh.Status
			if err := json.Unmarshal(body, &st); err != nil {
				return fmt.Errorf("%s: %w", url, err)
			}
			printStatus(std.out, st)
			return nil
		},
	}
}

func printStatus(w io.Writer, st fedmesh.Status) {
	fmt.Fprintf(w, "supernode %s  mesh %s\n", st.ID, st.Mesh)
	fmt.Fprintf(w, "names: %d registered here, %d routed; tunnels held: %d\n", st.LocalNames, st.Routed, st.Tunnels)
	fmt.Fprintf(w, "streams forwarded to peers: %d, served for peers: %d; names evicted: %d\n", st.Forwarded, st.Served, st.Evicted)
	var live []string
	for _, a := range st.LiveAddrs {
		live = append(live, a.String())
	}
	fmt.Fprintf(w, "DNS answers with: %s\n\n", strings.Join(live, " "))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PEER\tADDR\tHEALTH\tUP SINCE\tRTT\tNAMES\tTUNNELS\tDOWNS")
	for _, p := range st.Peers {
		health, since := "dead", "-"
		if p.Alive {
			health = "alive"
			since = p.Since.UTC().Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\n", p.ID, p.Addr, health, since, orDash(p.RTT), p.Names, p.Tunnels, p.Downs)
	}
	tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
