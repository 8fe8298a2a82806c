package punch

import (
	"fmt"
	"os"
)

func readFile(p string) ([]byte, error) { return os.ReadFile(p) }

func sscan(s string, a ...any) (int, error) { return fmt.Sscan(s, a...) }
