//go:build !amd64 || purego

package token

func b64DecodeFast(dst, src []byte) (int, bool) { return b64Decode(dst, src) }
