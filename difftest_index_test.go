package envelope_test

// The blind-index invariants of the differential test (difftest_test.go).
//
// DiffCred.APIKeyIdx is a per-owner index cut to 6 bits and DiffUser.EmailIdx
// a global, lower-casing index cut to 8 bits: distinct values share index
// values all the time, and envelope.Match must drop those rows. After every
// step:
//   - in the stored rows, a NULL source has a NULL index, a non-NULL source a
//     well-formed index value, and a shredded owner's global index is NULL;
//   - Match / MatchOwner, run by Find, Count or First (now and then on the
//     handle with no DEK cache), returns exactly the ids of the shadow rows
//     whose value equals the one looked up after the index's transform:
//     those of the owner named for the per-owner index (none for a shredded
//     owner), those of any owner not shredded for the global one. The values
//     looked up are those of the rows the step changed, and of a random row;
//     every indexSweep steps, those of every row.
//
// The shadow cannot compute index values: the row comparisons leave the
// index columns out, and only the raw snapshot (for a refused op) and these
// checks look at them.
//
// The ops this file adds: index_write and user_index_write write an index
// column without its source (Update, UpdateColumn, Updates and
// UpdateColumns with a map, Select, Create with a map, ON CONFLICT
// assignments), which the plugin must refuse; op.Idx on a Create, Save or
// struct Updates carries a stale or foreign index value in the row, which
// it must overwrite (or refuse, when the source is not written); and
// match_delete, match_update and their user_ forms write through Match.

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode"

	"github.com/gorm-envelope/envelope"
	"github.com/gorm-envelope/envelope/internal/testdb"
	"gorm.io/gorm"
	"gorm.io/gorm/clause"
)

// indexSweep is how often (in steps) every row's value is looked up.
const indexSweep = 100

// snapIndex describes a blind index column of a snapshot table.
type snapIndex struct {
	src, col int // cells: the source and the index column
	bits     int
	global   bool
}

// apiKeyPool and emailPool are the values the generator reuses, so that
// rows of one owner and of several share values (and index values).
var (
	apiKeyPool = []string{"k-alpha", "k-beta", "k-gamma", "k-delta", "k-epsilon", "k-zeta", "k-eta", "k-theta",
		"k-iota", "k-kappa", "k-ü€", "k🔑", "K-alpha", "k-alpha ", ""}
	emailPool = []string{"ada@example.org", "bob@example.org", "cy@example.org", "dee@example.org",
		"zoë@exämple.org", "ünal@x.io", "e@x", ""}
)

// apiKey is a value for an API key: mostly from the pool.
func (g *gen) apiKey() string {
	if g.chance(60) {
		return pick(g.r, apiKeyPool)
	}
	return g.word("key")
}

// email is a value for an email: mostly a pool address in a random case.
func (g *gen) email() string {
	if g.chance(55) {
		return flipCase(g.r.IntN(1<<30), pick(g.r, emailPool))
	}
	return g.word("mail")
}

// indexValue is a value an op writes into an index column directly: one
// stored in another row (a well-formed value someone else has), or one
// that looks like one.
func (g *gen) indexValue(table string) string {
	var col int
	for _, st := range snapTables {
		if st.table == table {
			col = st.idx[0].col
		}
	}
	var vals []string
	for _, id := range sortedIDs(g.h.snap.cells[table]) {
		if v := g.h.snap.cells[table][id][col]; v != "NULL" {
			vals = append(vals, unquote(v))
		}
	}
	if len(vals) > 0 && g.chance(60) {
		return pick(g.r, vals)
	}
	return pick(g.r, []string{"1:00", "1:fc", "2:00", "x"})
}

func sortedIDs[V any](m map[uint]V) []uint {
	ids := keys(m)
	slices.Sort(ids)
	return ids
}

func unquote(cell string) string {
	if s, err := strconv.Unquote(cell); err == nil {
		return s
	}
	return cell
}

// mustRefuse reports whether op writes an index column without its source:
// the plugin must refuse it.
func mustRefuse(op diffOp) bool {
	has := func(k string, nonEmpty bool) bool {
		return slices.ContainsFunc(op.Set, func(a kv) bool { return a.K == k && (!nonEmpty || a.V != "") })
	}
	switch op.Kind {
	case "index_write", "user_index_write":
		return true
	case "updates_struct":
		return op.Idx != "" && !has("APIKey", false)
	case "user_updates_struct":
		return op.Idx != "" && !has("Email", true) // GORM skips an empty Email
	case "upsert_id", "upsert_serial", "upsert_owner":
		return op.Act == "columns" && slices.Contains(op.Cols, "api_key_idx") && !slices.Contains(op.Cols, "api_key")
	case "user_upsert":
		return op.Act == "columns" && slices.Contains(op.Cols, "email_idx") && !slices.Contains(op.Cols, "email")
	case "tx":
		a, b := len(op.Sub), len(op.Sub)
		if strings.HasPrefix(op.Mode, "savepoint") {
			a, b = op.SP[0], op.SP[1]
		}
		for i, s := range op.Sub {
			if (i < a || i >= b) && mustRefuse(s) {
				return true
			}
		}
	}
	return false
}

// ---- the checks ----

// checkIndexes checks the index invariants after step; before is the
// snapshot taken before the step.
func (h *harness) checkIndexes(step int, op diffOp, before *rawSnap) *failure {
	start := time.Now()
	defer func() { h.idxTime += time.Since(start) }()
	if p := h.rawIndexProblems(); len(p) > 0 {
		return h.fail(step, op, "index-stored", "%s", strings.Join(capList(p), "\n  "))
	}
	var qs []matchQuery
	if h.fullIndex || step%indexSweep == indexSweep-1 {
		qs = h.sweepQueries()
		h.nShared += len(h.sharedIndexes())
	} else {
		qs = h.sampleQueries(before)
	}
	var probs []string
	for _, q := range qs {
		if h.skip["match_nodek"] && !q.users && !h.hasDEK(q.owner) {
			continue
		}
		h.nMatch++
		if h.falsePositives(q) {
			h.nFalsePos++
		}
		if p := h.runMatch(q); p != "" {
			probs = append(probs, p)
		}
	}
	if len(probs) > 0 {
		return h.fail(step, op, "match-mismatch", "%s", strings.Join(capList(probs), "\n  "))
	}
	return nil
}

func capList(xs []string) []string {
	if len(xs) > 12 {
		return append(xs[:12:12], fmt.Sprintf("and %d more", len(xs)-12))
	}
	return xs
}

// rawIndexProblems checks the stored index columns of the last snapshot.
func (h *harness) rawIndexProblems() []string {
	var out []string
	for _, st := range snapTables {
		for _, ix := range st.idx {
			for _, id := range sortedIDs(h.snap.cells[st.table]) {
				cells := h.snap.cells[st.table][id]
				src, idx := cells[ix.src], cells[ix.col]
				where := fmt.Sprintf("%s %d: %s", st.table, id, strings.Join(cells, " | "))
				switch {
				case src == "NULL" && idx != "NULL":
					out = append(out, where+": NULL source, index not NULL")
				case ix.global && h.shredded[id] && idx != "NULL":
					out = append(out, where+": the global index of a shredded owner is kept")
				case ix.global && h.shredded[id]:
				case src != "NULL" && idx == "NULL":
					out = append(out, where+": source set, index NULL")
				case idx != "NULL" && !wellFormedIndex(unquote(idx), ix.bits):
					out = append(out, where+fmt.Sprintf(": not a %d-bit index value", ix.bits))
				}
			}
		}
	}
	return out
}

// wellFormedIndex reports whether v is a stored index value of bits bits:
// "version:hex", the bits past the length zero.
func wellFormedIndex(v string, bits int) bool {
	ver, hx, ok := strings.Cut(v, ":")
	n, err := strconv.Atoi(ver)
	if !ok || err != nil || n < 1 || len(hx) != 2*((bits+7)/8) {
		return false
	}
	b, err := strconv.ParseUint(hx, 16, 64)
	if err != nil || hx != strings.ToLower(hx) {
		return false
	}
	return b&(1<<(8*((bits+7)/8)-bits)-1) == 0
}

// hasDEK reports whether owner has a profile row, as of the last snapshot.
func (h *harness) hasDEK(owner uint) bool {
	for _, cells := range h.snap.cells["diff_profiles"] {
		if strings.Trim(cells[1], `"`) == strconv.FormatUint(uint64(owner), 10) && cells[2] != "NULL" {
			return true
		}
	}
	return false
}

// matchQuery is one lookup by a blind index.
type matchQuery struct {
	users bool   // DiffUser by Email (global index); else DiffCred by APIKey (per owner)
	owner uint   // MatchOwner's owner; 0 for Match
	value string // the value looked up
	how   string // find, count, first
	cold  bool   // on the handle with no DEK cache
}

func (q matchQuery) String() string {
	m := fmt.Sprintf("Match(%q, %q)", "Email", q.value)
	if !q.users {
		m = fmt.Sprintf("MatchOwner(%d, %q, %q)", q.owner, "APIKey", q.value)
	} else if q.owner != 0 {
		m = fmt.Sprintf("MatchOwner(%d, %q, %q)", q.owner, "Email", q.value)
	}
	on := ""
	if q.cold {
		on = " (cold)"
	}
	return fmt.Sprintf("Where(%s).%s%s", m, q.how, on)
}

// falsePositives reports whether q's index value, as stored in a row that
// holds q's value, is also stored in a row (in q's scope) that holds
// another: the rows Match must drop. (The index value of a value no row
// holds is not known to the test.)
func (h *harness) falsePositives(q matchQuery) bool {
	type row struct{ idx, value string }
	var rows []row
	if q.users {
		for _, id := range h.userIDs {
			if cells := h.snap.cells["diff_users"][id]; cells != nil && cells[4] != "NULL" && !h.emailNull[id] {
				rows = append(rows, row{cells[4], strings.ToLower(h.users[id].Email)})
			}
		}
	} else {
		for _, id := range h.credIDs {
			c := h.creds[id]
			if cells := h.snap.cells["diff_creds"][id]; cells != nil && cells[6] != "NULL" && c.UserID == q.owner && c.APIKey != nil {
				rows = append(rows, row{cells[6], *c.APIKey})
			}
		}
	}
	want := q.value
	if q.users {
		want = strings.ToLower(want)
	}
	for _, r := range rows {
		if r.value != want {
			continue
		}
		for _, o := range rows {
			if o.idx == r.idx && o.value != want {
				return true
			}
		}
	}
	return false
}

// matchWant is the ids of the shadow rows q must return.
func (h *harness) matchWant(q matchQuery) []uint {
	var out []uint
	if q.users {
		want := strings.ToLower(q.value)
		for _, id := range h.userIDs {
			if h.shredded[id] || h.emailNull[id] || (q.owner != 0 && id != q.owner) {
				continue
			}
			if strings.ToLower(h.users[id].Email) == want {
				out = append(out, id)
			}
		}
		return out
	}
	if h.shredded[q.owner] {
		return nil // its key is gone: no value of its rows can be compared
	}
	for _, id := range h.credIDs {
		c := h.creds[id]
		if c.UserID == q.owner && c.APIKey != nil && *c.APIKey == q.value {
			out = append(out, id)
		}
	}
	return out
}

func (h *harness) matchCond(q matchQuery) clause.Expression {
	switch {
	case !q.users:
		return envelope.MatchOwner(q.owner, "APIKey", q.value)
	case q.owner != 0:
		return envelope.MatchOwner(q.owner, "Email", q.value)
	}
	return envelope.Match("Email", q.value)
}

// runMatch runs q and returns what is wrong with its result.
func (h *harness) runMatch(q matchQuery) string {
	db := h.db
	if q.cold {
		db = h.cold
	}
	want := h.matchWant(q)
	cond := h.matchCond(q)
	var model any = &DiffCred{}
	if q.users {
		model = &DiffUser{}
	}
	bad := func(format string, args ...any) string { return q.String() + ": " + fmt.Sprintf(format, args...) }
	switch q.how {
	case "find":
		var got []uint
		var wrong []string
		var err error
		if q.users {
			var us []DiffUser
			err = db.Where(cond).Order("id").Find(&us).Error
			for _, u := range us {
				got = append(got, u.ID)
				if strings.ToLower(u.Email) != strings.ToLower(q.value) {
					wrong = append(wrong, fmt.Sprintf("user %d has email %q", u.ID, u.Email))
				}
			}
		} else {
			var cs []DiffCred
			err = db.Where(cond).Order("id").Find(&cs).Error
			for _, c := range cs {
				got = append(got, c.ID)
				if c.UserID != q.owner || c.APIKey == nil || *c.APIKey != q.value {
					wrong = append(wrong, fmt.Sprintf("credential %d is %s", c.ID, fmtCred(c)))
				}
			}
		}
		switch {
		case err != nil:
			return bad("error %v (want ids %v)", err, want)
		case !slices.Equal(got, want):
			return bad("got ids %v, want %v", got, want)
		case len(wrong) > 0:
			return bad("rows that do not match: %s", strings.Join(wrong, "; "))
		}
	case "count":
		var n int64
		if err := db.Model(model).Where(cond).Count(&n).Error; err != nil {
			return bad("error %v (want %d)", err, len(want))
		}
		if n != int64(len(want)) {
			return bad("got %d, want %d (ids %v)", n, len(want), want)
		}
	case "first":
		var id uint
		var err error
		if q.users {
			var u DiffUser
			err = db.Where(cond).First(&u).Error
			id = u.ID
		} else {
			var c DiffCred
			err = db.Where(cond).First(&c).Error
			id = c.ID
		}
		switch {
		case len(want) == 0 && !errors.Is(err, gorm.ErrRecordNotFound):
			return bad("got id %d, error %v; want gorm.ErrRecordNotFound", id, err)
		case len(want) > 0 && err != nil:
			return bad("error %v, want id %d", err, want[0])
		case len(want) > 0 && id != want[0]:
			return bad("got id %d, want %d (of %v)", id, want[0], want)
		}
	}
	return ""
}

var matchHows = []string{"find", "find", "count", "first"}

func (h *harness) query(users bool, owner uint, value string) matchQuery {
	return matchQuery{users: users, owner: owner, value: value, how: pick(h.r, matchHows), cold: h.r.IntN(5) == 0}
}

// credLookup is a lookup of a credential's API key; a row without owner (no
// MatchOwner for it) or without key looks up a pool value of another owner.
func (h *harness) credLookup(id uint) matchQuery {
	c := h.creds[id]
	o, v := c.UserID, pick(h.r, apiKeyPool)
	if o == 0 {
		o = h.bare[h.r.IntN(len(h.bare))]
	}
	if c.APIKey != nil && h.r.IntN(5) != 0 {
		v = *c.APIKey
	}
	return h.query(false, o, v)
}

// userLookup is a lookup of a user's email, in another case; now and then
// with the user as owner.
func (h *harness) userLookup(id uint) matchQuery {
	v := h.users[id].Email
	if h.emailNull[id] || h.r.IntN(6) == 0 {
		v = pick(h.r, emailPool)
	}
	var o uint
	if h.r.IntN(5) == 0 {
		o = id
	}
	return h.query(true, o, flipCase(h.r.IntN(1<<30), v))
}

// flipCase flips the case of the letters of s picked by the bits of mask.
func flipCase(mask int, s string) string {
	rs := []rune(s)
	for i, r := range rs {
		if mask>>(i%30)&1 == 1 {
			if unicode.IsUpper(r) {
				rs[i] = unicode.ToLower(r)
			} else {
				rs[i] = unicode.ToUpper(r)
			}
		}
	}
	return string(rs)
}

// sampleQueries looks up the rows the step changed (a few), and a value
// whose index value another value shares or a random row.
func (h *harness) sampleQueries(before *rawSnap) []matchQuery {
	var qs []matchQuery
	for _, id := range changedRows(before, h.snap, "diff_creds") {
		if _, ok := h.creds[id]; ok && len(qs) < 2 {
			qs = append(qs, h.credLookup(id))
		}
	}
	for _, id := range changedRows(before, h.snap, "diff_users") {
		if _, ok := h.users[id]; ok && len(qs) < 3 {
			qs = append(qs, h.userLookup(id))
		}
	}
	shared := h.sharedIndexes()
	switch {
	case len(shared) > 0 && h.r.IntN(2) == 0:
		s := pick(h.r, shared)
		if s.users {
			s.value = flipCase(h.r.IntN(1<<30), s.value)
		}
		qs = append(qs, h.query(s.users, s.owner, s.value))
	case len(h.credIDs) > 0 && (len(h.userIDs) == 0 || h.r.IntN(2) == 0):
		qs = append(qs, h.credLookup(pick(h.r, h.credIDs)))
	case len(h.userIDs) > 0:
		qs = append(qs, h.userLookup(pick(h.r, h.userIDs)))
	default:
		qs = append(qs, h.query(false, h.bare[0], pick(h.r, apiKeyPool)))
	}
	return qs
}

// changedRows returns the ids of table's rows that a step added or changed.
func changedRows(before, after *rawSnap, table string) []uint {
	var out []uint
	for _, id := range sortedIDs(after.cells[table]) {
		if b, ok := before.cells[table][id]; !ok || !slices.Equal(b, after.cells[table][id]) {
			out = append(out, id)
		}
	}
	return out
}

// sweepQueries looks up every value held: each owner's API keys, each
// email, and a pool value per owner (and per owner not a user).
func (h *harness) sweepQueries() []matchQuery {
	var qs []matchQuery
	seen := map[string]bool{}
	owners := map[uint]bool{}
	for _, id := range h.credIDs {
		c := h.creds[id]
		if c.UserID == 0 {
			continue
		}
		owners[c.UserID] = true
		if c.APIKey != nil && !seen[fmt.Sprint(c.UserID, "\x00", *c.APIKey)] {
			seen[fmt.Sprint(c.UserID, "\x00", *c.APIKey)] = true
			qs = append(qs, h.query(false, c.UserID, *c.APIKey))
		}
	}
	for _, o := range h.bare {
		owners[o] = true // some may have no DEK yet
	}
	for _, o := range sortedIDs(owners) {
		qs = append(qs, h.query(false, o, pick(h.r, apiKeyPool)))
	}
	for _, id := range h.userIDs {
		if e := strings.ToLower(h.users[id].Email); !h.emailNull[id] && !seen["\x00"+e] {
			seen["\x00"+e] = true
			qs = append(qs, h.query(true, 0, flipCase(h.r.IntN(1<<30), h.users[id].Email)))
		}
		if h.r.IntN(4) == 0 {
			qs = append(qs, h.userLookup(id))
		}
	}
	return qs
}

// ---- the ops that write index columns, or write through Match ----

// withIdx returns v (a row or a struct patch) with its index field set to
// idx, if idx is not empty.
func withIdx(v any, idx string) any {
	if idx == "" {
		return v
	}
	switch x := v.(type) {
	case *DiffCred:
		x.APIKeyIdx = &idx
	case *ShadowCred:
		x.APIKeyIdx = &idx
	case *DiffUser:
		x.EmailIdx = &idx
	case *ShadowUser:
		x.EmailIdx = &idx
	case DiffCred:
		x.APIKeyIdx = &idx
		return x
	case ShadowCred:
		x.APIKeyIdx = &idx
		return x
	case DiffUser:
		x.EmailIdx = &idx
		return x
	case ShadowUser:
		x.EmailIdx = &idx
		return x
	}
	return v
}

// indexWrite runs an index_write or user_index_write op: a statement that
// writes op.Idx into the index column without its source (and op.Set's plain
// columns). The row is op.Cred (its owner known) or user op.Who.
func (s *side) indexWrite(db *gorm.DB, op diffOp) error {
	users := op.Kind == "user_index_write"
	col, field := "api_key_idx", "APIKeyIdx"
	var row any
	if users {
		col, field = "email_idx", "EmailIdx"
		row = s.userKey(s.ref(op.Who))
	} else {
		row = s.cred(*op.Cred)
	}
	m := s.mapOf(op.Set)
	m[col] = op.Idx
	switch op.Via {
	case "update":
		return db.Model(row).Update(col, op.Idx).Error
	case "update_field":
		return db.Model(row).Update(field, op.Idx).Error
	case "update_column":
		return db.Model(row).UpdateColumn(col, op.Idx).Error
	case "updates_map":
		return db.Model(row).Updates(m).Error
	case "update_columns":
		return db.Model(row).UpdateColumns(m).Error
	case "select":
		patch := withIdx(s.patch(op.Set), op.Idx)
		fields := []string{field}
		if users {
			patch = withIdx(s.userPatch(op.Set), op.Idx)
		}
		for _, a := range op.Set {
			fields = append(fields, a.K)
		}
		return db.Model(row).Select(fields).Updates(patch).Error
	case "create_map":
		c := s.credVal(*op.Cred)
		m["id"], m["user_id"], m["serial"], m["password"] = c.ID, c.UserID, c.Serial, c.Password
		if c.APIKey != nil {
			m["api_key"] = *c.APIKey
		}
		return db.Model(s.model(DiffCred{})).Create(m).Error
	case "upsert_assign", "upsert_columns":
		oc := clause.OnConflict{Columns: []clause.Column{{Name: "id"}}, DoUpdates: clause.Assignments(map[string]any{col: op.Idx})}
		if op.Via == "upsert_columns" {
			oc.DoUpdates = clause.AssignmentColumns(op.Cols)
		}
		if users {
			return db.Clauses(oc).Create(s.user(*op.User)).Error
		}
		return db.Clauses(oc).Create(row).Error
	}
	return fmt.Errorf("difftest: %s: unknown Via %q", op.Kind, op.Via)
}

// matchWrite runs a Delete or an Update whose condition is a Match: on
// the encrypted side, envelope.Match (users) or MatchOwner(op.Who)
// (credentials); on the shadow, the ids of the rows whose value equals
// op.Match (lower-cased, for emails), not of a shredded owner.
func (s *side) matchWrite(db *gorm.DB, op diffOp) error {
	users := isUserKind(op.Kind)
	var cond any
	if s.enc {
		switch {
		case !users:
			cond = envelope.MatchOwner(s.ref(op.Who), "APIKey", op.Match)
		case op.Who != 0:
			cond = envelope.MatchOwner(s.ref(op.Who), "Email", op.Match)
		default:
			cond = envelope.Match("Email", op.Match)
		}
	} else {
		ids, err := s.shadowMatch(db, op)
		if err != nil {
			return err
		}
		cond = clause.IN{Column: clause.PrimaryColumn, Values: anys(ids)}
	}
	var model any
	switch {
	case users:
		model = s.userKey(0)
	default:
		model = s.model(DiffCred{UserID: s.ref(op.Who)})
	}
	if strings.HasSuffix(op.Kind, "_delete") {
		return db.Where(cond).Delete(model).Error
	}
	return db.Model(model).Where(cond).Updates(s.mapOf(op.Set)).Error
}

func anys(ids []uint) []any {
	out := make([]any, len(ids))
	for i, id := range ids {
		out[i] = id
	}
	return out
}

// shadowMatch returns the ids of the shadow rows a match op finds, read
// in db (the shadow or a transaction on it).
func (s *side) shadowMatch(db *gorm.DB, op diffOp) ([]uint, error) {
	var ids []uint
	if isUserKind(op.Kind) {
		var rows []struct {
			ID    uint
			Email *string
		}
		if err := db.Table("shadow_users").Select("id", "email").Order("id").Scan(&rows).Error; err != nil {
			return nil, err
		}
		for _, r := range rows {
			if r.Email != nil && !s.h.shredded[r.ID] && (op.Who == 0 || r.ID == s.ref(op.Who)) &&
				strings.ToLower(*r.Email) == strings.ToLower(op.Match) {
				ids = append(ids, r.ID)
			}
		}
		return ids, nil
	}
	o := s.ref(op.Who)
	if s.h.shredded[o] {
		return nil, nil
	}
	var cs []ShadowCred
	if err := db.Where("user_id = ?", o).Order("id").Find(&cs).Error; err != nil {
		return nil, err
	}
	for _, c := range cs {
		if c.APIKey != nil && *c.APIKey == op.Match {
			ids = append(ids, c.ID)
		}
	}
	return ids, nil
}

// ---- generating them ----

// maybeIdx is, now and then, an index value for an op that writes a row
// or a struct patch to carry: the plugin must overwrite it, or refuse the
// op when it does not write the source.
func (g *gen) maybeIdx(table string) string {
	if g.chance(10) {
		return g.indexValue(table)
	}
	return ""
}

// indexOp fills in an op that writes an index column itself, or writes
// through a Match.
func (g *gen) indexOp(op diffOp) (diffOp, bool) {
	switch op.Kind {
	case "index_write":
		id, ok := g.existingCred()
		if !ok {
			return op, false
		}
		c := g.rowOf(id)
		op.Cred = &c
		op.Idx = g.indexValue("diff_creds")
		op.Via = pick(g.r, []string{"update", "update_field", "update_column", "updates_map", "update_columns", "select", "create_map", "upsert_assign", "upsert_columns"})
		switch op.Via {
		case "create_map":
			n := g.newCred(g.credID(10))
			op.Cred = &n
		case "upsert_columns":
			n := g.newCred(id) // a conflict on id, with another key
			n.Owner = c.Owner
			op.Cred = &n
			op.Cols = []string{"api_key_idx"}
			if g.chance(50) {
				op.Cols = append(op.Cols, "facility")
			}
		}
		if g.chance(40) && op.Via != "create_map" && !strings.HasPrefix(op.Via, "upsert") {
			op.Set = []kv{{pick(g.r, []string{"facility", "Facility"}), g.word("fac")}}
			if op.Via == "select" {
				op.Set[0].K = "Facility"
			}
		}
	case "user_index_write":
		id, ok := g.pickUser()
		if !ok {
			return op, false
		}
		op.Who = g.whoOf(id)
		op.Idx = g.indexValue("diff_users")
		op.Via = pick(g.r, []string{"update", "update_field", "update_column", "updates_map", "update_columns", "select", "upsert_assign", "upsert_columns"})
		if strings.HasPrefix(op.Via, "upsert") {
			u := g.newUserRec(g.whoOf(id))
			op.User = &u
			op.Who = 0
			if op.Via == "upsert_columns" {
				op.Cols = []string{"email_idx"}
				if g.chance(50) {
					op.Cols = append(op.Cols, "name")
				}
			}
		} else if g.chance(40) {
			op.Set = []kv{{"Name", g.word("name")}}
			if op.Via != "select" {
				op.Set[0].K = pick(g.r, []string{"name", "Name"})
			}
		}
	case "match_delete", "match_update":
		id, ok := g.existingCred()
		if !ok || g.h.creds[id].UserID == 0 {
			return op, false
		}
		c := g.h.creds[id]
		op.Who = g.whoOf(c.UserID)
		op.Match = pick(g.r, apiKeyPool)
		if c.APIKey != nil && g.chance(75) {
			op.Match = *c.APIKey
		}
		if op.Kind == "match_update" {
			cols := [][2]string{{"facility", "Facility"}, {"password", "Password"}, {"api_key", "APIKey"}}
			g.r.Shuffle(len(cols), func(i, j int) { cols[i], cols[j] = cols[j], cols[i] })
			for _, col := range cols[:1+g.r.IntN(2)] {
				k := col[g.r.IntN(2)]
				op.Set = append(op.Set, kv{k, g.credValue(k, c.UserID)})
			}
		}
	case "user_match_delete", "user_match_update":
		id, ok := g.pickUser()
		if !ok {
			return op, false
		}
		op.Match = flipCase(g.r.IntN(1<<30), g.h.users[id].Email)
		if g.chance(15) {
			op.Match = g.email()
		}
		if g.chance(20) {
			op.Who = g.whoOf(id)
		}
		if op.Kind == "user_match_update" {
			op.Set = []kv{{pick(g.r, []string{"name", "Name"}), g.word("name")}}
		}
	}
	return op, true
}

// TestDifferentialIndexHarness checks that the index checks see what they
// are for: a stored index that is missing, left behind or wrong, a
// shredded owner's global index kept, and which ops must be refused.
func TestDifferentialIndexHarness(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		h := newHarness(t, db)
		h.fullIndex, h.skip = true, skipSet(diffKnownFailures)
		const a = 1000001
		for i, op := range []diffOp{
			{Kind: "create", Cred: &opCred{ID: 1, Owner: a, Serial: "s1", Password: "a", APIKey: ptr("k-alpha")}},
			{Kind: "create", Cred: &opCred{ID: 2, Owner: a, Serial: "s2", Password: "b", APIKey: ptr("k-beta")}},
			{Kind: "user_create", Via: "id", User: &opUser{ID: a, Name: "u", Email: "Ada@Example.org"}},
		} {
			if f := h.step(i, op); f != nil {
				t.Fatalf("setup: %s", f)
			}
		}
		q := func(s string) string { // ? placeholders, $n on PostgreSQL
			if testdb.DialectOf(db) != testdb.Postgres {
				return s
			}
			for n := 1; strings.Contains(s, "?"); n++ {
				s = strings.Replace(s, "?", fmt.Sprintf("$%d", n), 1)
			}
			return s
		}
		exec := func(s string, args ...any) {
			t.Helper()
			if _, err := h.raw.Exec(q(s), args...); err != nil {
				t.Fatalf("%s: %v", s, err)
			}
			var err error
			if h.snap, err = h.snapshot(); err != nil {
				t.Fatal(err)
			}
		}
		check := func(what, class string) {
			t.Helper()
			f := h.checkIndexes(0, diffOp{Kind: "read", Via: "preload"}, h.snap)
			if class == "" && f != nil {
				t.Fatalf("%s: %s", what, f)
			}
			if class != "" && (f == nil || f.class != class) {
				t.Fatalf("%s: got %v, want a %s failure", what, f, class)
			}
		}
		check("untouched", "")
		idx1, _ := rawColumn(t, db, "diff_creds", "api_key_idx", 1)
		idx2, _ := rawColumn(t, db, "diff_creds", "api_key_idx", 2)
		email, _ := rawColumn(t, db, "diff_users", "email_idx", a)

		exec("UPDATE diff_creds SET api_key_idx = NULL WHERE id = 1")
		check("index of a key NULL", "index-stored")
		exec("UPDATE diff_creds SET api_key_idx = ? WHERE id = 1", idx1+"0")
		check("index of a key not 6 bits", "index-stored")
		other := "1:00"
		if idx1 == other {
			other = "1:04"
		}
		exec("UPDATE diff_creds SET api_key_idx = ? WHERE id = 1", other)
		check("index of another value", "match-mismatch")
		exec("UPDATE diff_creds SET api_key_idx = ? WHERE id = 1", idx1)
		check("index put back", "")
		// Row 1 given row 2's index value: a lookup of k-beta reads it and
		// must drop it, a lookup of k-alpha misses it.
		// (Six bits: the two rows share an index value one time in 64, and
		// then there is nothing to tell apart.)
		if idx2 != idx1 {
			exec("UPDATE diff_creds SET api_key_idx = ? WHERE id = 1", idx2)
			check("index of the other row", "match-mismatch")
			exec("UPDATE diff_creds SET api_key_idx = ? WHERE id = 1", idx1)
		}

		exec("UPDATE diff_users SET email_idx = NULL WHERE id = ?", a)
		check("global index NULL", "index-stored")
		exec("UPDATE diff_users SET email_idx = ? WHERE id = ?", email, a)
		h.shredded[a] = true
		check("a shredded owner's global index kept", "index-stored")
		delete(h.shredded, a)
		check("global index put back", "")

		for _, c := range []struct {
			op   diffOp
			want bool
		}{
			{diffOp{Kind: "index_write", Via: "update"}, true},
			{diffOp{Kind: "user_index_write", Via: "select"}, true},
			{diffOp{Kind: "updates_struct", Idx: "1:00", Set: []kv{{"Password", "x"}}}, true},
			{diffOp{Kind: "updates_struct", Idx: "1:00", Set: []kv{{"APIKey", "x"}}}, false},
			{diffOp{Kind: "user_updates_struct", Idx: "1:00", Set: []kv{{"Email", ""}}}, true},
			{diffOp{Kind: "user_updates_struct", Idx: "1:00", Set: []kv{{"Email", "e"}}}, false},
			{diffOp{Kind: "upsert_id", Act: "columns", Cols: []string{"facility", "api_key_idx"}}, true},
			{diffOp{Kind: "upsert_id", Act: "columns", Cols: []string{"api_key", "api_key_idx"}}, false},
			{diffOp{Kind: "create", Idx: "1:00"}, false},
			{diffOp{Kind: "tx", Sub: []diffOp{{Kind: "read"}, {Kind: "index_write"}}}, true},
			{diffOp{Kind: "tx", Mode: "savepoint", SP: [2]int{1, 2}, Sub: []diffOp{{Kind: "read"}, {Kind: "index_write"}}}, false},
		} {
			if got := mustRefuse(c.op); got != c.want {
				t.Errorf("mustRefuse(%#v) = %v, want %v", c.op, got, c.want)
			}
		}
		unsafe := &envelope.FieldError{Model: "DiffCred", Field: "APIKeyIdx", Err: envelope.ErrUnsafe}
		iw := diffOp{Kind: "index_write", Via: "update", Cred: &opCred{ID: 1, Owner: a, Serial: "s1", Password: "a"}, Idx: "1:00"}
		if f := h.checkRefusal(0, iw, unsafe); f != nil {
			t.Fatalf("ErrUnsafe for an index write: %s", f)
		}
		plain := diffOp{Kind: "create", Cred: &opCred{ID: 9, Owner: a, Serial: "s9", Password: "p"}, Idx: "1:00"}
		if f := h.checkRefusal(0, plain, unsafe); f == nil || f.class != "unexpected-refusal" {
			t.Fatalf("ErrUnsafe for a create whose source is written: got %v, want unexpected-refusal", f)
		}

		for _, c := range []struct {
			v    string
			bits int
			want bool
		}{
			{"1:fc", 6, true}, {"1:fd", 6, false}, {"12:00", 6, true}, {"1:ff", 8, true},
			{"0:00", 8, false}, {"1:0", 8, false}, {"1:FF", 8, false}, {"x", 8, false}, {"1:00ff", 8, false},
		} {
			if got := wellFormedIndex(c.v, c.bits); got != c.want {
				t.Errorf("wellFormedIndex(%q, %d) = %v, want %v", c.v, c.bits, got, c.want)
			}
		}
	})
}

// sharedIndexes returns lookups of the values whose stored index value
// rows with another value share (of the same owner, for the per-owner
// index): the rows Match must drop.
func (h *harness) sharedIndexes() []matchQuery {
	type row struct {
		q     matchQuery
		group string // the owner (or none) and the index value
	}
	var rows []row
	for _, id := range h.credIDs {
		c := h.creds[id]
		if cells := h.snap.cells["diff_creds"][id]; cells != nil && cells[6] != "NULL" && c.APIKey != nil && c.UserID != 0 {
			rows = append(rows, row{matchQuery{owner: c.UserID, value: *c.APIKey}, fmt.Sprint(c.UserID, " ", cells[6])})
		}
	}
	for _, id := range h.userIDs {
		if cells := h.snap.cells["diff_users"][id]; cells != nil && cells[4] != "NULL" && !h.emailNull[id] {
			rows = append(rows, row{matchQuery{users: true, value: strings.ToLower(h.users[id].Email)}, "users " + cells[4]})
		}
	}
	vals := map[string]map[string]bool{}
	for _, r := range rows {
		if vals[r.group] == nil {
			vals[r.group] = map[string]bool{}
		}
		vals[r.group][r.q.value] = true
	}
	var out []matchQuery
	for _, r := range rows {
		if len(vals[r.group]) > 1 {
			out = append(out, r.q)
		}
	}
	return out
}
