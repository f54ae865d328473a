package bench

import (
	"bytes"
	"testing"
	"time"

	"github.com/courier-dev/courier/internal/testutil"
	"github.com/courier-dev/courier/pkg/tasks"
)

// Ordered delivery under chaos: three worker processes against a simulator
// answering 15% 503, dropping connections before and after accepting,
// bursts of 429, a room answering 404, and one worker SIGKILLed. Every
// room's messages arrive in enqueue order (a duplicate may repeat a
// message, never reorder), and nothing is lost. The full size (5,000
// messages over 50 rooms) runs with courierbench chaos -ordered.
func TestOrderedChaos(t *testing.T) {
	if testing.Short() {
		t.Skip("a chaos run takes minutes")
	}
	log := &testutil.Buffer{}
	o := ChaosOptions{Messages: 600, Rooms: 12, Workers: 3, Concurrency: 5, KillEvery: 4 * time.Second, Kills: 1,
		Quiesce: 4 * time.Minute, Latency: 50 * time.Millisecond, RecoveryAfter: tasks.DefaultRecoveryAfter, Ordered: true, KeepRedis: true, Log: log}
	rep, err := Chaos(o)
	if rep != nil {
		var out bytes.Buffer
		rep.Print(&out)
		t.Log("\n" + out.String())
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := rep.Check(); err != nil {
		t.Fatal(err)
	}
	if rep.Delivered+rep.DeadLettered != o.Messages || rep.WorkerKills != 1 {
		t.Fatalf("delivered %d + dead-lettered %d of %d, %d kills", rep.Delivered, rep.DeadLettered, o.Messages, rep.WorkerKills)
	}
}
