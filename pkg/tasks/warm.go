package tasks

// warm runs deliveries on long-lived goroutines. asynq starts a goroutine
// per task, and a delivery's calls (retry policy, HTTP client, Redis) grow
// its stack from the smallest size every time: a profile of a draining
// worker showed a tenth of its CPU copying stacks (runtime.copystack). A
// goroutine that lives keeps its grown stack across deliveries (the garbage
// collector shrinks an idle one only by half at a time). A panic in a
// delivery is raised again in the caller's goroutine, where asynq recovers
// it as before.
type warm struct {
	jobs chan warmJob
}

type warmJob struct {
	fn   func() error
	done chan<- warmResult
}

type warmResult struct {
	err      error
	panicked bool
	value    any
}

// newWarm starts n goroutines (the worker's concurrency: asynq never runs
// more deliveries at once; more would wait their turn).
func newWarm(n int) *warm {
	w := &warm{jobs: make(chan warmJob)}
	for range n {
		go func() {
			for j := range w.jobs {
				j.done <- call(j.fn)
			}
		}()
	}
	return w
}

func call(fn func() error) (r warmResult) {
	defer func() {
		if x := recover(); x != nil {
			r = warmResult{panicked: true, value: x}
		}
	}()
	return warmResult{err: fn()}
}

// run runs fn on one of the goroutines and returns its error.
func (w *warm) run(fn func() error) error {
	done := make(chan warmResult, 1)
	w.jobs <- warmJob{fn: fn, done: done}
	r := <-done
	if r.panicked {
		panic(r.value)
	}
	return r.err
}

// stop ends the goroutines as the deliveries under way return; it does not
// wait for them: a delivery asynq gave up on at its shutdown timeout (its
// context cancelled) ends by itself, as it did on asynq's own goroutine.
func (w *warm) stop() { close(w.jobs) }
