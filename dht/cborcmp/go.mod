module github.com/elacity/pc2/dht/cborcmp

go 1.26

require (
	github.com/elacity/pc2 v0.0.0
	github.com/fxamacker/cbor/v2 v2.9.0
)

require (
	filippo.io/edwards25519 v1.1.0 // indirect
	github.com/mr-tron/base58 v1.2.0 // indirect
	github.com/tyler-smith/go-bip39 v1.1.0 // indirect
	github.com/x448/float16 v0.8.4 // indirect
	golang.org/x/crypto v0.44.0 // indirect
	golang.org/x/sys v0.38.0 // indirect
	golang.org/x/text v0.31.0 // indirect
)

replace github.com/elacity/pc2 => ../..
