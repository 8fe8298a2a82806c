package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"

	"github.com/elacity/pc2/core/config"
	"github.com/elacity/pc2/core/identity"
	"golang.org/x/term"
)

func idCommand() *command {
	var (
		data, keyFile string
		asJSON        bool
		printOnly     bool
	)
	keyFlags := func(fs *flag.FlagSet) {
		fs.StringVar(&data, "data", config.Default(config.RoleNode, false).DataDir, "data directory holding the key file")
		fs.StringVar(&keyFile, "key", "", "key file (default <data>/key)")
		fs.BoolVar(&asJSON, "json", false, "print JSON")
	}
	keyPath := func() string {
		if keyFile != "" {
			return keyFile
		}
		return data + "/key"
	}
	return &command{
		name:    "id",
		summary: "create, show and recover the node identity",
		subs: []*command{
			{
				name:    "new",
				summary: "create an identity and print its 12 recovery words",
				help: `Creates a new Ed25519 identity from 128 random bits, writes the key file
(mode 0600) and prints the DID and the 12 BIP-39 words that recover it.
An existing key file is never replaced.`,
				flags: func(fs *flag.FlagSet) {
					keyFlags(fs)
					fs.BoolVar(&printOnly, "print-only", false, "print the words and id without writing a key file")
				},
				run: func(_ context.Context, std *stdio, _ *flag.FlagSet, args []string) error {
					if err := noArgs(args); err != nil {
						return err
					}
					words, kp, err := identity.NewMnemonic(rand.Reader)
					if err != nil {
						return err
					}
					path := keyPath()
					if printOnly {
						path = ""
					} else if err := writeNewKey(path, kp); err != nil {
						return err
					}
					return printIdentity(std.out, kp, path, words, asJSON)
				},
			},
			{
				name:    "show",
				summary: "print the id, DID and public keys of a key file",
				flags:   keyFlags,
				run: func(_ context.Context, std *stdio, _ *flag.FlagSet, args []string) error {
					if err := noArgs(args); err != nil {
						return err
					}
					kp, err := identity.LoadKeyFile(keyPath())
					if errors.Is(err, fs.ErrNotExist) {
						return fmt.Errorf("no key file at %s (create one with `pc2 id new`)", keyPath())
					}
					if err != nil {
						return err
					}
					return printIdentity(std.out, kp, keyPath(), "", asJSON)
				},
			},
			{
				name:    "recover",
				summary: "recreate the key file from the 12 recovery words",
				help: `Reads the 12 words from standard input (or asks for them when standard
input is a terminal, without echo), never from the command line, where
they would stay in shell history and the process list.`,
				flags: func(fs *flag.FlagSet) {
					keyFlags(fs)
					fs.BoolVar(&printOnly, "print-only", false, "print the recovered id without writing a key file")
				},
				run: func(_ context.Context, std *stdio, _ *flag.FlagSet, args []string) error {
					if len(args) > 0 {
						return usageError{"the words are read from standard input, not from arguments"}
					}
					phrase, err := readWords(std)
					if err != nil {
						return err
					}
					kp, err := identity.FromMnemonic(phrase)
					if err != nil {
						return err
					}
					path := keyPath()
					if printOnly {
						path = ""
					} else if err := writeRecoveredKey(std, path, kp); err != nil {
						return err
					}
					return printIdentity(std.out, kp, path, "", asJSON)
				},
			},
		},
	}
}

func writeNewKey(path string, kp *identity.KeyPair) error {
	err := identity.WriteKeyFile(path, kp)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("a key file already exists at %s; it is never replaced (move it away first, or use --data)", path)
	}
	return err
}

// writeRecoveredKey writes kp unless the file already holds an identity.
// Recovering the identity a file already has is not an error.
func writeRecoveredKey(std *stdio, path string, kp *identity.KeyPair) error {
	existing, err := identity.LoadKeyFile(path)
	switch {
	case err == nil && existing.ID() == kp.ID():
		fmt.Fprintf(std.err, "%s already holds this identity\n", path)
		return nil
	case err == nil:
		return fmt.Errorf("%s holds a different identity (%s); it is never replaced (move it away first, or use --data)", path, existing.ID())
	case !errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("%w; move the damaged file away to recover into this path", err)
	}
	return writeNewKey(path, kp)
}

// maxWordsInput bounds what recover reads from standard input.
const maxWordsInput = 4096

func readWords(std *stdio) (string, error) {
	if f, ok := std.in.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		fmt.Fprint(std.err, "Enter the 12 recovery words (input is hidden): ")
		b, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(std.err)
		if err != nil {
			return "", fmt.Errorf("read words: %w", err)
		}
		return string(b), nil
	}
	b, err := io.ReadAll(io.LimitReader(bufio.NewReader(std.in), maxWordsInput+1))
	if err != nil {
		return "", fmt.Errorf("read words: %w", err)
	}
	if len(b) > maxWordsInput {
		return "", fmt.Errorf("read words: more than %d bytes on standard input", maxWordsInput)
	}
	return string(b), nil
}

type identityView struct {
	DID     string `json:"did"`
	ID      string `json:"id"`
	Hex     string `json:"hex"`
	X25519  string `json:"x25519"`
	KeyFile string `json:"keyFile,omitempty"`
	Words   string `json:"words,omitempty"`
}

func printIdentity(w io.Writer, kp *identity.KeyPair, keyFile, words string, asJSON bool) error {
	x, err := kp.ID().X25519Public()
	if err != nil {
		return err
	}
	v := identityView{
		DID:     kp.ID().DID(),
		ID:      kp.ID().String(),
		Hex:     kp.ID().Hex(),
		X25519:  hex.EncodeToString(x[:]),
		KeyFile: keyFile,
		Words:   words,
	}
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	fmt.Fprintf(w, "did:      %s\nid:       %s\nhex:      %s\nx25519:   %s\n", v.DID, v.ID, v.Hex, v.X25519)
	if keyFile != "" {
		fmt.Fprintf(w, "key file: %s\n", keyFile)
	}
	if words != "" {
		fmt.Fprintf(w, "\nRecovery words (write them down and keep them offline; anyone who has\nthem has this identity; `pc2 id recover` turns them back into the key):\n\n    %s\n", words)
		ws := strings.Fields(words)
		for i := 0; i < len(ws); i += 4 {
			fmt.Fprintf(w, "\n    %2d %-9s %2d %-9s %2d %-9s %2d %s", i+1, ws[i], i+2, ws[i+1], i+3, ws[i+2], i+4, ws[i+3])
		}
		fmt.Fprintln(w)
	}
	return nil
}
