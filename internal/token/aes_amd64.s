// The AES-128 key expansion follows expandKeyAsm in Go's
// crypto/internal/fips140/aes/aes_amd64.s (Copyright The Go Authors,
// BSD-style license, see https://go.dev/LICENSE).

//go:build !purego

#include "textflag.h"

// func expandKey128(key *byte, enc *byte, dec *byte)
// enc receives the 11 AES-128 encryption round keys, dec the 11 round keys
// of the equivalent inverse cipher in the order AESDEC uses them.
TEXT ·expandKey128(SB), NOSPLIT, $0-24
	MOVQ   key+0(FP), AX
	MOVQ   enc+8(FP), BX
	MOVQ   dec+16(FP), DX
	MOVUPS (AX), X0
	MOVUPS X0, (BX)
	ADDQ   $16, BX
	PXOR   X4, X4
	AESKEYGENASSIST $0x01, X0, X1
	CALL   expand128<>(SB)
	AESKEYGENASSIST $0x02, X0, X1
	CALL   expand128<>(SB)
	AESKEYGENASSIST $0x04, X0, X1
	CALL   expand128<>(SB)
	AESKEYGENASSIST $0x08, X0, X1
	CALL   expand128<>(SB)
	AESKEYGENASSIST $0x10, X0, X1
	CALL   expand128<>(SB)
	AESKEYGENASSIST $0x20, X0, X1
	CALL   expand128<>(SB)
	AESKEYGENASSIST $0x40, X0, X1
	CALL   expand128<>(SB)
	AESKEYGENASSIST $0x80, X0, X1
	CALL   expand128<>(SB)
	AESKEYGENASSIST $0x1b, X0, X1
	CALL   expand128<>(SB)
	AESKEYGENASSIST $0x36, X0, X1
	CALL   expand128<>(SB)

	// dec[0] = enc[10]; dec[i] = InvMixColumns(enc[10-i]); dec[10] = enc[0].
	SUBQ   $16, BX
	MOVUPS (BX), X1
	MOVUPS X1, (DX)
	MOVQ   $9, CX

decloop:
	MOVUPS -16(BX), X1
	AESIMC X1, X0
	MOVUPS X0, 16(DX)
	SUBQ   $16, BX
	ADDQ   $16, DX
	DECQ   CX
	JNZ    decloop
	MOVUPS -16(BX), X0
	MOVUPS X0, 16(DX)
	RET

TEXT expand128<>(SB), NOSPLIT, $0
	PSHUFD $0xff, X1, X1
	SHUFPS $0x10, X0, X4
	PXOR   X4, X0
	SHUFPS $0x8c, X0, X4
	PXOR   X4, X0
	PXOR   X1, X0
	MOVUPS X0, (BX)
	ADDQ   $16, BX
	RET

#define ROUND8(off, op) \
	MOVUPS off(AX), X8; \
	op X8, X0; \
	op X8, X1; \
	op X8, X2; \
	op X8, X3; \
	op X8, X4; \
	op X8, X5; \
	op X8, X6; \
	op X8, X7

#define XORPREV(off, reg) \
	MOVUPS off(BX), X8; \
	PXOR   X8, reg; \
	MOVUPS reg, off(DX)

// func cbcDecrypt(dec *byte, dst *byte, src *byte, n int)
// src holds n+1 blocks: the IV, then n ciphertext blocks. dst receives the
// n decrypted blocks: D(src[i+1]) XOR src[i]. dst must not overlap src.
TEXT ·cbcDecrypt(SB), NOSPLIT, $0-32
	MOVQ dec+0(FP), AX
	MOVQ dst+8(FP), DX
	MOVQ src+16(FP), BX
	MOVQ n+24(FP), CX

loop8:
	CMPQ   CX, $8
	JB     loop1
	MOVUPS 16(BX), X0
	MOVUPS 32(BX), X1
	MOVUPS 48(BX), X2
	MOVUPS 64(BX), X3
	MOVUPS 80(BX), X4
	MOVUPS 96(BX), X5
	MOVUPS 112(BX), X6
	MOVUPS 128(BX), X7
	ROUND8(0, PXOR)
	ROUND8(16, AESDEC)
	ROUND8(32, AESDEC)
	ROUND8(48, AESDEC)
	ROUND8(64, AESDEC)
	ROUND8(80, AESDEC)
	ROUND8(96, AESDEC)
	ROUND8(112, AESDEC)
	ROUND8(128, AESDEC)
	ROUND8(144, AESDEC)
	ROUND8(160, AESDECLAST)
	XORPREV(0, X0)
	XORPREV(16, X1)
	XORPREV(32, X2)
	XORPREV(48, X3)
	XORPREV(64, X4)
	XORPREV(80, X5)
	XORPREV(96, X6)
	XORPREV(112, X7)
	ADDQ   $128, BX
	ADDQ   $128, DX
	SUBQ   $8, CX
	JMP    loop8

loop1:
	TESTQ      CX, CX
	JZ         done
	MOVUPS     16(BX), X0
	MOVUPS     (AX), X8
	PXOR       X8, X0
	MOVUPS     16(AX), X8
	AESDEC     X8, X0
	MOVUPS     32(AX), X8
	AESDEC     X8, X0
	MOVUPS     48(AX), X8
	AESDEC     X8, X0
	MOVUPS     64(AX), X8
	AESDEC     X8, X0
	MOVUPS     80(AX), X8
	AESDEC     X8, X0
	MOVUPS     96(AX), X8
	AESDEC     X8, X0
	MOVUPS     112(AX), X8
	AESDEC     X8, X0
	MOVUPS     128(AX), X8
	AESDEC     X8, X0
	MOVUPS     144(AX), X8
	AESDEC     X8, X0
	MOVUPS     160(AX), X8
	AESDECLAST X8, X0
	XORPREV(0, X0)
	ADDQ       $16, BX
	ADDQ       $16, DX
	DECQ       CX
	JMP        loop1

done:
	RET

// func cbcEncrypt(enc *byte, dst *byte, iv *byte, n int)
// dst holds n plaintext blocks, encrypted in place with AES-128-CBC from iv.
TEXT ·cbcEncrypt(SB), NOSPLIT, $0-32
	MOVQ   enc+0(FP), AX
	MOVQ   dst+8(FP), DX
	MOVQ   iv+16(FP), BX
	MOVQ   n+24(FP), CX
	MOVUPS (BX), X0
	MOVUPS 0(AX), X1
	MOVUPS 16(AX), X2
	MOVUPS 32(AX), X3
	MOVUPS 48(AX), X4
	MOVUPS 64(AX), X5
	MOVUPS 80(AX), X6
	MOVUPS 96(AX), X7
	MOVUPS 112(AX), X8
	MOVUPS 128(AX), X9
	MOVUPS 144(AX), X10
	MOVUPS 160(AX), X11

encloop:
	TESTQ      CX, CX
	JZ         encdone
	MOVUPS     (DX), X12
	PXOR       X12, X0
	PXOR       X1, X0
	AESENC     X2, X0
	AESENC     X3, X0
	AESENC     X4, X0
	AESENC     X5, X0
	AESENC     X6, X0
	AESENC     X7, X0
	AESENC     X8, X0
	AESENC     X9, X0
	AESENC     X10, X0
	AESENCLAST X11, X0
	MOVUPS     X0, (DX)
	ADDQ       $16, DX
	DECQ       CX
	JMP        encloop

encdone:
	RET

#define VROUND(key, op) \
	op key, Z0, Z0; \
	op key, Z1, Z1; \
	op key, Z2, Z2; \
	op key, Z3, Z3

// func cbcDecryptVAES(dec *byte, dst *byte, src *byte, n int)
// cbcDecrypt for n a multiple of 16, sixteen blocks per step in four
// 512-bit registers (AVX-512 with VAES).
TEXT ·cbcDecryptVAES(SB), NOSPLIT, $0-32
	MOVQ            dec+0(FP), AX
	MOVQ            dst+8(FP), DX
	MOVQ            src+16(FP), BX
	MOVQ            n+24(FP), CX
	VBROADCASTI32X4 0(AX), Z16
	VBROADCASTI32X4 16(AX), Z17
	VBROADCASTI32X4 32(AX), Z18
	VBROADCASTI32X4 48(AX), Z19
	VBROADCASTI32X4 64(AX), Z20
	VBROADCASTI32X4 80(AX), Z21
	VBROADCASTI32X4 96(AX), Z22
	VBROADCASTI32X4 112(AX), Z23
	VBROADCASTI32X4 128(AX), Z24
	VBROADCASTI32X4 144(AX), Z25
	VBROADCASTI32X4 160(AX), Z26

vloop:
	CMPQ      CX, $16
	JB        vdone
	VMOVDQU64 16(BX), Z0
	VMOVDQU64 80(BX), Z1
	VMOVDQU64 144(BX), Z2
	VMOVDQU64 208(BX), Z3
	VROUND(Z16, VPXORQ)
	VROUND(Z17, VAESDEC)
	VROUND(Z18, VAESDEC)
	VROUND(Z19, VAESDEC)
	VROUND(Z20, VAESDEC)
	VROUND(Z21, VAESDEC)
	VROUND(Z22, VAESDEC)
	VROUND(Z23, VAESDEC)
	VROUND(Z24, VAESDEC)
	VROUND(Z25, VAESDEC)
	VROUND(Z26, VAESDECLAST)
	VPXORQ    0(BX), Z0, Z0
	VPXORQ    64(BX), Z1, Z1
	VPXORQ    128(BX), Z2, Z2
	VPXORQ    192(BX), Z3, Z3
	VMOVDQU64 Z0, 0(DX)
	VMOVDQU64 Z1, 64(DX)
	VMOVDQU64 Z2, 128(DX)
	VMOVDQU64 Z3, 192(DX)
	ADDQ      $256, BX
	ADDQ      $256, DX
	SUBQ      $16, CX
	JMP       vloop

vdone:
	VZEROUPPER
	RET
