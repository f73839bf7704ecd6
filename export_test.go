package envelope

// PurgeCacheForTest empties p's DEK cache (benchmarks of cold reads).
func PurgeCacheForTest(p *Plugin) {
	p.cache.Purge()
	p.opened.Purge()
}

// SetParallelMinForTest sets the row count from which results are
// decrypted in parallel, and returns a function that restores it.
func SetParallelMinForTest(n int) func() {
	old := parallelMin
	parallelMin = n
	return func() { parallelMin = old }
}
