package envelope

import "context"

// PurgeCacheForTest empties p's DEK cache (benchmarks of cold reads).
func PurgeCacheForTest(p *Plugin) {
	p.store.Purge()
}

// SetParallelMinForTest sets the row count from which results are
// decrypted in parallel, and returns a function that restores it.
func SetParallelMinForTest(n int) func() {
	old := parallelMin
	parallelMin = n
	return func() { parallelMin = old }
}

// PipelinedForTest returns how many values p decrypted while their result
// was being scanned.
func PipelinedForTest(p *Plugin) uint64 { return p.pipelined.Load() }

// SetPipelineForTest switches decrypting while scanning on or off, and
// returns a function that restores it.
func SetPipelineForTest(on bool) func() {
	old := pipelineOn
	pipelineOn = on
	return func() { pipelineOn = old }
}

// PipelineInContext reports whether ctx still holds a query's pipeline.
func PipelineInContext(ctx context.Context) bool {
	ss := stateIn(ctx)
	return ss != nil && ss.read != nil
}

// ForgetIndexKeysForTest drops p's cached global index keys.
func ForgetIndexKeysForTest(p *Plugin) { p.ikeys.Forget() }

// SetRekeyFaultForTest makes every step of Rekey and RekeyAll call f, and
// stop with the error f returns; it returns a function that restores the
// hook. Not safe while a rekey runs.
func SetRekeyFaultForTest(f func(step string) error) func() {
	old := rekeyFault
	rekeyFault = f
	return func() { rekeyFault = old }
}
