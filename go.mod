module github.com/elacity/pc2

go 1.26

require (
	filippo.io/edwards25519 v1.1.0
	github.com/VictoriaMetrics/metrics v1.40.2
	github.com/mr-tron/base58 v1.2.0
	github.com/tyler-smith/go-bip39 v1.1.0
	golang.org/x/crypto v0.44.0
	golang.org/x/sys v0.38.0
)

require (
	github.com/valyala/fastrand v1.1.0 // indirect
	github.com/valyala/histogram v1.2.0 // indirect
)
