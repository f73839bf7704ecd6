package envelope

// PurgeCacheForTest empties p's DEK cache (benchmarks of cold reads).
func PurgeCacheForTest(p *Plugin) { p.cache.Purge() }
