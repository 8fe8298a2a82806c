// Package sniproxy is the supernode's TLS passthrough data path.
package sniproxy
