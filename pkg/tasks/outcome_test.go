package tasks

import (
	"errors"
	"fmt"
	"testing"

	"github.com/hibiken/asynq"

	"github.com/courier-dev/courier/pkg/webex"
)

// Dead-letter outcomes skip asynq's retry and use up a redelivery; holds
// (rate limits, a rejected token, a stopping worker) do neither.
func TestOutcomeFates(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		o            Outcome
		dead, counts bool
	}{
		{Delivered, false, false}, {Transient, false, true}, {RateLimited, false, false}, {Unauthorized, false, false},
		{Interrupted, false, false}, {Deferred, false, false}, {Permanent, true, true}, {Exhausted, true, true},
		{Expired, true, true}, {Corrupt, true, true}, {Poison, true, true},
	} {
		de := &DeliveryError{Outcome: c.o, Err: errors.New("cause")}
		if c.o.DeadLetter() != c.dead || c.o.countsAsFailure() != c.counts || errors.Is(de, asynq.SkipRetry) != c.dead {
			t.Errorf("%s: dead letter %v, counts %v, skips retry %v", c.o, c.o.DeadLetter(), c.o.countsAsFailure(), errors.Is(de, asynq.SkipRetry))
		}
	}
}

func TestDeliveryErrorCarriesWebexFacts(t *testing.T) {
	t.Parallel()
	api := &webex.APIError{StatusCode: 404, Message: "room not found", TrackingID: "ROUTER_1"}
	de := &DeliveryError{Outcome: Permanent, Err: fmt.Errorf("send message: %w", api), Part: 2, Parts: 3}
	var got *webex.APIError
	if !errors.As(de, &got) || de.Status() != 404 || de.TrackingID() != "ROUTER_1" {
		t.Fatalf("status %d, tracking id %q", de.Status(), de.TrackingID())
	}
	if want := "permanent (message 2 of 3): send message: " + api.Error(); de.Error() != want {
		t.Fatalf("Error() = %q, want %q", de.Error(), want)
	}
	if plain := (&DeliveryError{Outcome: Transient, Err: errors.New("reset")}); plain.Status() != 0 || plain.TrackingID() != "" || plain.Error() != "transient: reset" {
		t.Fatalf("%q %d %q", plain.Error(), plain.Status(), plain.TrackingID())
	}
}
