package tasks

import "google.golang.org/protobuf/encoding/protowire"

// taskMessage is the part of asynq's task message (its internal
// base.TaskMessage, protobuf TaskMessage in internal/proto/asynq.proto of
// asynq v0.26) that courier sets. Ordered messages wait in courier's keys
// already encoded, so that a script can enqueue them into asynq as
// asynq's own enqueue would.
type taskMessage struct {
	typ       string
	payload   []byte
	id        string
	queue     string
	retry     int   // asynq's MaxRetry
	timeout   int64 // seconds
	retention int64 // seconds
}

// asynqDefaultTimeout is the timeout asynq's client gives a task that sets
// neither a timeout nor a deadline (its defaultTimeout, 30 min), in seconds.
const asynqDefaultTimeout = 30 * 60

// Field numbers of asynq's TaskMessage.
const (
	fieldType      = 1
	fieldPayload   = 2
	fieldID        = 3
	fieldQueue     = 4
	fieldRetry     = 5
	fieldErrorMsg  = 7
	fieldTimeout   = 8
	fieldRetention = 12
)

// encodeTaskMessage encodes m as asynq's protobuf TaskMessage (proto3: zero
// fields are left out).
func encodeTaskMessage(m taskMessage) []byte {
	var b []byte
	str := func(num protowire.Number, s string) {
		if s != "" {
			b = protowire.AppendTag(b, num, protowire.BytesType)
			b = protowire.AppendString(b, s)
		}
	}
	varint := func(num protowire.Number, v int64) {
		if v != 0 {
			b = protowire.AppendTag(b, num, protowire.VarintType)
			b = protowire.AppendVarint(b, uint64(v))
		}
	}
	str(fieldType, m.typ)
	if len(m.payload) > 0 {
		b = protowire.AppendTag(b, fieldPayload, protowire.BytesType)
		b = protowire.AppendBytes(b, m.payload)
	}
	str(fieldID, m.id)
	str(fieldQueue, m.queue)
	varint(fieldRetry, int64(m.retry))
	varint(fieldTimeout, m.timeout)
	varint(fieldRetention, m.retention)
	return b
}

// payloadOf reads the payload field of an encoded asynq task message.
func payloadOf(b []byte) ([]byte, error) { return bytesField(b, fieldPayload) }

// errorMsgOf reads the error message field of an encoded asynq task
// message: the text of the error asynq last retried or archived it with.
func errorMsgOf(b []byte) (string, error) {
	v, err := bytesField(b, fieldErrorMsg)
	return string(v), err
}

// bytesField reads field num (a string or bytes field) of an encoded asynq
// task message; nil when it is absent.
func bytesField(b []byte, num protowire.Number) ([]byte, error) {
	for len(b) > 0 {
		got, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, protowire.ParseError(n)
		}
		b = b[n:]
		if got == num && typ == protowire.BytesType {
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return nil, protowire.ParseError(n)
			}
			return v, nil
		}
		n = protowire.ConsumeFieldValue(got, typ, b)
		if n < 0 {
			return nil, protowire.ParseError(n)
		}
		b = b[n:]
	}
	return nil, nil
}
