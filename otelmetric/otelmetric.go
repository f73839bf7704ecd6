// Package otelmetric exports the envelope plugin's counts as OpenTelemetry
// metrics: values encrypted, decrypted and failed, DEK cache events, and
// the latency of master-key calls (Fernet master keys and KMS keepers
// alike).
//
// It is a module of its own so that the core module does not depend on
// OpenTelemetry. Give the observer [New] returns to the plugin:
//
//	obs, err := otelmetric.New(otel.GetMeterProvider())
//	if err != nil {
//		return err
//	}
//	err = db.Use(envelope.New(envelope.Config{Keys: keys, Profile: &Profile{}, Observer: obs}))
//
// # Instruments
//
// The meter is named after this package's import path. Its instruments:
//
//	envelope.values.encrypted      Int64Counter      {value}  envelope.model, envelope.field
//	envelope.values.decrypted      Int64Counter      {value}  envelope.model, envelope.field
//	envelope.value.errors          Int64Counter      {error}  envelope.model, envelope.field, error.type
//	envelope.dek.cache.events      Int64Counter      {event}  envelope.dek.cache.event
//	envelope.master_key.duration   Float64Histogram  s        envelope.master_key.operation, error.type
//
// envelope.model and envelope.field are the Go names of the model and the
// field ("Credential", "Password"); envelope.field is left out of an error
// that names no field. error.type on envelope.value.errors is one of
// decrypt, shredded, no_key, no_owner, unsafe, duplicate, conflict or
// _OTHER (see the envelope package's errors). envelope.dek.cache.event is
// hit, miss, load (a DEK read from the profile table and opened) or create
// (an owner given a new DEK). envelope.master_key.operation is decrypt or
// encrypt; error.type is set only on a failed call: decrypt (no configured
// key opened it), no_key, timeout, canceled or _OTHER. The histogram's
// count is the number of master-key calls.
//
// No attribute ever holds an owner, a value, a key or an error message:
// their cardinality is that of the app's models and fields.
package otelmetric

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/gorm-envelope/envelope"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// ScopeName is the name of the meter the instruments are made with.
const ScopeName = "github.com/gorm-envelope/envelope/otelmetric"

// Attribute keys.
const (
	ModelKey     = attribute.Key("envelope.model")
	FieldKey     = attribute.Key("envelope.field")
	ErrorTypeKey = attribute.Key("error.type")
	CacheKey     = attribute.Key("envelope.dek.cache.event")
	OperationKey = attribute.Key("envelope.master_key.operation")
)

// durationBounds are the histogram's bucket boundaries in seconds, from a
// local Fernet key (microseconds) to a KMS across a network (up to
// seconds).
var durationBounds = []float64{
	0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005,
	0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
}

// observer implements envelope.Observer with OpenTelemetry instruments.
type observer struct {
	encrypted, decrypted, failed, cache metric.Int64Counter
	keyCalls                            metric.Float64Histogram

	// sets caches the attribute options of each (model, field[, kind]),
	// so that a measurement allocates nothing once its set was seen.
	sets sync.Map // setKey -> metric.MeasurementOption
}

type setKey struct {
	model, field, kind string
}

// New returns an envelope.Observer recording into instruments of a meter
// of mp. Its methods are safe for concurrent use.
func New(mp metric.MeterProvider) (envelope.Observer, error) {
	if mp == nil {
		return nil, errors.New("otelmetric: nil MeterProvider")
	}
	m := mp.Meter(ScopeName)
	o := &observer{}
	var err error
	if o.encrypted, err = m.Int64Counter("envelope.values.encrypted",
		metric.WithUnit("{value}"),
		metric.WithDescription("Encrypted field values sealed for writing.")); err != nil {
		return nil, err
	}
	if o.decrypted, err = m.Int64Counter("envelope.values.decrypted",
		metric.WithUnit("{value}"),
		metric.WithDescription("Encrypted field values opened by queries.")); err != nil {
		return nil, err
	}
	if o.failed, err = m.Int64Counter("envelope.value.errors",
		metric.WithUnit("{error}"),
		metric.WithDescription("Encrypted field values that could not be written or read, by kind.")); err != nil {
		return nil, err
	}
	if o.cache, err = m.Int64Counter("envelope.dek.cache.events",
		metric.WithUnit("{event}"),
		metric.WithDescription("DEK cache hits, misses, loads from the profile table and DEKs created.")); err != nil {
		return nil, err
	}
	if o.keyCalls, err = m.Float64Histogram("envelope.master_key.duration",
		metric.WithUnit("s"),
		metric.WithDescription("Duration of calls to the master keyring (Fernet master keys or a KMS)."),
		metric.WithExplicitBucketBoundaries(durationBounds...)); err != nil {
		return nil, err
	}
	return o, nil
}

// set returns the attribute option of k, made once.
func (o *observer) set(k setKey, mk func() attribute.Set) metric.MeasurementOption {
	if v, ok := o.sets.Load(k); ok {
		return v.(metric.MeasurementOption)
	}
	v, _ := o.sets.LoadOrStore(k, metric.WithAttributeSet(mk()))
	return v.(metric.MeasurementOption)
}

func (o *observer) fieldSet(model, field string) metric.MeasurementOption {
	return o.set(setKey{model: model, field: field}, func() attribute.Set {
		return attribute.NewSet(ModelKey.String(model), FieldKey.String(field))
	})
}

func (o *observer) ValuesEncrypted(model, field string, n int) {
	o.encrypted.Add(context.Background(), int64(n), o.fieldSet(model, field))
}

func (o *observer) ValuesDecrypted(model, field string, n int) {
	o.decrypted.Add(context.Background(), int64(n), o.fieldSet(model, field))
}

func (o *observer) ValuesFailed(model, field string, kind error, n int) {
	t := valueErrorType(kind)
	opt := o.set(setKey{model: model, field: field, kind: t}, func() attribute.Set {
		if field == "" {
			return attribute.NewSet(ModelKey.String(model), ErrorTypeKey.String(t))
		}
		return attribute.NewSet(ModelKey.String(model), FieldKey.String(field), ErrorTypeKey.String(t))
	})
	o.failed.Add(context.Background(), int64(n), opt)
}

func (o *observer) DEKCache(event string, n int) {
	opt := o.set(setKey{model: "\x00cache", field: event}, func() attribute.Set {
		return attribute.NewSet(CacheKey.String(event))
	})
	o.cache.Add(context.Background(), int64(n), opt)
}

func (o *observer) MasterKeyCall(op string, d time.Duration, err error) {
	var opt metric.MeasurementOption
	if err == nil {
		opt = o.set(setKey{model: "\x00op", field: op}, func() attribute.Set {
			return attribute.NewSet(OperationKey.String(op))
		})
	} else {
		t := keyErrorType(err)
		opt = o.set(setKey{model: "\x00op", field: op, kind: t}, func() attribute.Set {
			return attribute.NewSet(OperationKey.String(op), ErrorTypeKey.String(t))
		})
	}
	o.keyCalls.Record(context.Background(), d.Seconds(), opt)
}

// valueErrorType is the error.type of a failed value's kind.
func valueErrorType(kind error) string {
	switch kind {
	case envelope.ErrDecrypt:
		return "decrypt"
	case envelope.ErrShredded:
		return "shredded"
	case envelope.ErrNoKey:
		return "no_key"
	case envelope.ErrNoOwner:
		return "no_owner"
	case envelope.ErrUnsafe:
		return "unsafe"
	case envelope.ErrDuplicate:
		return "duplicate"
	case envelope.ErrConflict:
		return "conflict"
	}
	return "_OTHER"
}

// keyErrorType is the error.type of a failed master-key call.
func keyErrorType(err error) string {
	switch {
	case errors.Is(err, envelope.ErrNoKey):
		return "no_key"
	case errors.Is(err, envelope.ErrDecrypt):
		return "decrypt"
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "canceled"
	}
	return "_OTHER"
}
