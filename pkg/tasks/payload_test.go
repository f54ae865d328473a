package tasks

import (
	"errors"
	"testing"
)

func TestDecodePayload(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   string
		want error
	}{
		{`{"v":1,"message":{"roomId":"r","text":"x"}}`, nil},
		{`{"v":2}`, ErrNewerPayload},
		{`{"v":0}`, ErrCorruptPayload},
		{`{}`, ErrCorruptPayload},
		{`[1]`, ErrCorruptPayload},
		{``, ErrCorruptPayload},
	} {
		_, err := DecodePayload([]byte(tc.in))
		if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
			t.Errorf("DecodePayload(%q) = %v, want %v", tc.in, err, tc.want)
		}
	}
}
