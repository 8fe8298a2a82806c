package main

import (
	"context"
	"errors"
	"flag"
	"path/filepath"

	"github.com/elacity/pc2/core/config"
	"github.com/elacity/pc2/core/identity"
	"github.com/elacity/pc2/plugins/registry/client"
)

// nameCommand mounts the registry client's commands (register, list,
// show, delete). Requests are signed with the key in --data.
func nameCommand() *command {
	data := config.Default(config.RoleNode, false).DataDir
	loadKey := func() (*identity.KeyPair, error) { return identity.LoadKeyFile(filepath.Join(data, "key")) }
	cmd := &command{name: "name", summary: "register, list, show and delete names at a supernode"}
	for _, c := range client.Commands(loadKey) {
		cmd.subs = append(cmd.subs, &command{
			name:    c.Name,
			args:    c.Args,
			summary: c.Summary,
			flags: func(fs *flag.FlagSet) {
				fs.StringVar(&data, "data", data, "data directory holding the key that owns the names")
				if c.Flags != nil {
					c.Flags(fs)
				}
			},
			run: func(ctx context.Context, std *stdio, _ *flag.FlagSet, args []string) error {
				err := c.Run(ctx, std.out, args)
				if errors.Is(err, client.ErrUsage) {
					return usageError{err.Error()}
				}
				return err
			},
		})
	}
	return cmd
}
