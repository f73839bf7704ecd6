package blind

import (
	"errors"
	"fmt"
	"math"
	"math/bits"
)

// Plan is a recommended index length for a table, with the range it was
// chosen from and what to expect at it.
type Plan struct {
	// Rows and Distinct are the table's rows and the distinct
	// (transformed) values among them.
	Rows, Distinct uint64

	// MinBits is the shortest length that keeps FalsePositives within
	// √Rows; MaxBits the longest that keeps Coincidences at 2 or more (0
	// when no length does). The range is empty when MinBits > MaxBits.
	// Bits is the recommendation: MaxBits when the range is not empty.
	MinBits, MaxBits, Bits int

	// FalsePositives is the expected number of rows a query at Bits
	// returns that hold another value (and are dropped once decrypted).
	FalsePositives float64

	// Coincidences is the expected number of other values that share one
	// value's index value at Bits. At 2 or more, rows with equal index
	// values are not shown to hold equal values.
	Coincidences float64

	// Note is one line when the range is empty or no length hides the
	// values; "" otherwise.
	Note string
}

// PlanBits recommends an index length for a table of rows rows holding
// distinct distinct values (after the index's transform). It returns an
// error if rows or distinct is 0, or distinct > rows: a table cannot hold
// more distinct values than rows, so that is taken for a mistake (swapped
// arguments, say) rather than clamped.
//
// The model is CipherSweet's and the AWS Database Encryption SDK's: each of
// the D distinct values is held by R/D of the R rows, and the keyed hash
// sends each value to one of the 2^L index values of an L-bit index,
// uniformly and independently. Then:
//
//	Coincidences(L)   = (D-1) / 2^L        other values sharing a value's index value
//	FalsePositives(L) = R·(D-1)/D / 2^L    rows of other values a query returns
//
// The rules, and where they come from:
//
//   - Hiding: Coincidences(L) >= 2, so MaxBits = floor(log2((D-1)/2)) =
//     bits.Len64(D-1) - 2. An index value that only one plaintext has
//     shows which rows are equal; truncation makes index values shared.
//     CipherSweet's planner (src/Planner/FieldIndexPlanner.php) and
//     docs/SECURITY.md ("Blind Index Information Leaks") ask for a
//     coincidence count C = R / 2^min(L, K) of at least 2, K being the
//     input's keyspace in bits; the AWS guide ("Choosing a beacon
//     length") asks for at least 2 plaintexts per beacon, a maximum length
//     of log2(N/2) for N distinct values. Counting distinct values, not
//     rows, is the AWS form: rows that share the same plaintext hide
//     nothing, which C counts once L >= K. For a column of distinct values
//     (D = R) the two agree: (R-1)/2^L is C less the row itself.
//   - Cost: FalsePositives(L) <= √R, so MinBits is the least L >= 1 with
//     R·(D-1)/D <= √R·2^L. CipherSweet: "if C is larger than the square
//     root of R, then there is no marginal benefit of using blind indexes
//     at all"; the AWS guide's minimum length is log2(√N).
//
// Bits is the longest length both allow: MaxBits, the fewest false
// positives that still hide. When the two conflict (MaxBits < MinBits,
// which happens when D is below about 2√R), hiding wins: Bits is MaxBits
// and Note gives the false positives to expect. When no length hides
// (fewer than 5 distinct values), Bits is MinBits and Note says the index
// shows which rows are equal, as a full 256-bit index (the only kind a
// unique constraint can use) always does.
func PlanBits(rows, distinct uint64) (Plan, error) {
	switch {
	case rows == 0:
		return Plan{}, errors.New("envelope: blind index plan: rows must be at least 1")
	case distinct == 0:
		return Plan{}, errors.New("envelope: blind index plan: distinct values must be at least 1")
	case distinct > rows:
		return Plan{}, fmt.Errorf("envelope: blind index plan: %d distinct values in %d rows: a table holds at most as many distinct values as rows", distinct, rows)
	}
	p := Plan{Rows: rows, Distinct: distinct}
	p.MaxBits = max(0, bits.Len64(distinct-1)-2)
	sqrtR := math.Sqrt(float64(rows))
	p.MinBits = MaxBits
	for l := MinBits; l <= MaxBits; l++ {
		if p.falsePositives(l) <= sqrtR {
			p.MinBits = l
			break
		}
	}
	switch {
	case p.MaxBits == 0:
		p.Bits = p.MinBits
		p.Note = fmt.Sprintf("%s too few to hide: at every length a value shares its index value with fewer than 2 others, so the index shows which rows hold equal values (as a full %d-bit index, the only kind a unique constraint can use, always does)",
			countValues(distinct), MaxBits)
	case p.MinBits > p.MaxBits:
		p.Bits = p.MaxBits
		p.Note = fmt.Sprintf("no length both hides values (at most %d bits) and keeps false positives within √rows = %s (at least %d bits): at %d bits a query returns about %.0f rows of other values",
			p.MaxBits, decimal(sqrtR), p.MinBits, p.Bits, p.falsePositives(p.Bits))
	default:
		p.Bits = p.MaxBits
	}
	p.FalsePositives = p.falsePositives(p.Bits)
	p.Coincidences = math.Ldexp(float64(p.Distinct-1), -p.Bits)
	return p, nil
}

// falsePositives is R·(D-1)/D / 2^l.
func (p *Plan) falsePositives(l int) float64 {
	r, d := float64(p.Rows), float64(p.Distinct)
	return math.Ldexp(r*(d-1)/d, -l)
}

func countValues(d uint64) string {
	if d == 1 {
		return "1 distinct value is"
	}
	return fmt.Sprintf("%d distinct values are", d)
}

// decimal formats x with two decimals, or none if it is a whole number.
func decimal(x float64) string {
	if x == math.Trunc(x) {
		return fmt.Sprintf("%.0f", x)
	}
	return fmt.Sprintf("%.2f", x)
}
