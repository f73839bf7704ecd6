package blind

import (
	"strings"
	"testing"
)

// sink keeps the compiler from dropping Value's result.
var sink string

func benchValue(b *testing.B, n int) {
	k := mustKey(b, randRoot(b), "email")
	plain := strings.Repeat("x", n)
	b.Run("Value", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(n))
		for b.Loop() {
			sink = k.Value(1, 32, plain)
		}
	})
	b.Run("AppendValue", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(n))
		buf := make([]byte, 0, maxValueLen)
		for b.Loop() {
			buf = k.AppendValue(buf[:0], 1, 32, plain)
		}
	})
	b.Run("Parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(n))
		b.RunParallel(func(pb *testing.PB) {
			buf := make([]byte, 0, maxValueLen)
			for pb.Next() {
				buf = k.AppendValue(buf[:0], 1, 32, plain)
			}
		})
	})
}

func BenchmarkValue32(b *testing.B)   { benchValue(b, 32) }
func BenchmarkValue256(b *testing.B)  { benchValue(b, 256) }
func BenchmarkValue1KiB(b *testing.B) { benchValue(b, 1024) }
