package envelope_test

// The operations of the differential test (difftest_test.go): what an
// operation is, how it runs on either side (the encrypted models or their
// plaintext shadows), how it prints as Go, and how the generator picks one.

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"

	"github.com/gorm-envelope/envelope"
	"gorm.io/gorm"
	"gorm.io/gorm/clause"
)

// who names an owner, or a user, in a diffOp: a literal id (> 0); the user
// whose id the insert made under handle -w assigned (< 0); or none (0,
// written as 0 or NULL).
type who int

// opCred is a credential row as an operation writes it.
type opCred struct {
	ID       uint
	Owner    who
	Facility string
	Serial   string
	Password string
	APIKey   *string
}

// opUser is a user row as an operation writes it. ID is a literal id or,
// for a user whose id the insert assigns, a handle (< 0).
type opUser struct {
	ID    who
	Name  string
	Email string
	Phone *string
}

// kv is one assignment of a map, an Update or a struct patch. V is a
// string, nil (NULL; a nil pointer in a struct patch), or a who (an id).
type kv struct {
	K string
	V any
}

// diffOp is one GORM operation of the differential test. Which fields
// matter depends on Kind; see (*side).run.
type diffOp struct {
	Kind     string
	Via      string // how the statement names its row: loaded, row, stale, key, where, owned, owner, ids, auto, id, new, existing; index writes: the statement
	ID       uint   // a credential id
	IDs      []uint // credential ids (Delete by ids)
	Who      who    // an owner or a user
	Cred     *opCred
	Creds    []opCred
	User     *opUser
	Users    []opUser
	Set      []kv     // map, Update(col, v), struct patch, clause.Assignments
	Cols     []string // clause.AssignmentColumns
	Act      string   // upsert action: nothing, columns, assign, all
	Batch    int
	Unscoped bool
	Sub      []diffOp // tx: the statements inside
	Mode     string   // tx: commit, rollback, savepoint, savepoint_rollback
	SP       [2]int   // tx savepoint modes: Sub[SP[0]:SP[1]] runs after SAVEPOINT and is rolled back to it
	Idx      string   // a value the op writes into the blind index column itself
	Match    string   // match ops: the value envelope.Match looks up
}

// label names the op's kind and variant, as ENVELOPE_DIFF_SKIP matches them.
func (o diffOp) label() string {
	v := o.Via
	if v == "" {
		v = o.Act
	}
	if v == "" {
		v = o.Mode
	}
	if o.Unscoped {
		v += "+unscoped"
	}
	if v == "" {
		return o.Kind
	}
	return o.Kind + "/" + v
}

// matches reports whether the op (or one inside a transaction) is named by
// an ENVELOPE_DIFF_SKIP entry: a kind (upsert_serial), a label
// (updates_map/where) or a variant (stale, unscoped).
func (o diffOp) matches(skip map[string]bool) bool {
	if len(skip) == 0 {
		return false
	}
	l := o.label()
	kind, variant, _ := strings.Cut(l, "/")
	variant, unscoped := strings.CutSuffix(variant, "+unscoped")
	if skip[kind] || skip[l] || skip[kind+"/"+variant] || (variant != "" && skip[variant]) || (unscoped && skip["unscoped"]) {
		return true
	}
	// An owner move or clear in a map or Update.
	for _, a := range o.Set {
		if isOwnerKey(o.Kind, a.K) {
			if skip["move"] {
				return true
			}
			if w, ok := a.V.(who); (ok && w == 0 || a.V == nil) && skip["clear_owner"] {
				return true
			}
		}
	}
	if skip["owner0"] && o.Kind != "user_create" && (o.Cred != nil && o.Cred.Owner == 0 || slices.ContainsFunc(o.Creds, func(c opCred) bool { return c.Owner == 0 })) {
		return true
	}
	if skip["autoid"] && (o.User != nil && o.User.ID < 0 && (o.Kind == "user_create" || o.Via == "new") || slices.ContainsFunc(o.Users, func(u opUser) bool { return u.ID < 0 })) {
		return true
	}
	if skip["nested"] && o.Kind == "user_create" && len(o.Creds) > 0 {
		return true
	}
	if skip["move"] && slices.ContainsFunc(o.Cols, func(c string) bool { return isOwnerKey(o.Kind, c) }) {
		return true
	}
	if skip["idx_cols"] && slices.ContainsFunc(o.Cols, func(c string) bool { return strings.HasSuffix(c, "_idx") }) {
		return true
	}
	for _, s := range o.Sub {
		if s.matches(skip) {
			return true
		}
	}
	return false
}

func isOwnerKey(kind, k string) bool {
	if strings.HasPrefix(kind, "user_") {
		return k == "id" || k == "ID"
	}
	return k == "user_id" || k == "UserID"
}

func isUserKind(kind string) bool { return strings.HasPrefix(kind, "user_") }

// ---- running an op ----

var (
	errDiffRollback = errors.New("difftest: transaction rolled back on purpose")
	errDiffProbe    = errors.New("difftest: probe rolled back")
)

// unboundID is what a handle resolves to when the insert that was to bind it
// did not run or failed (in a shrunk sequence): an id no row has.
const unboundID = 3_999_999

// probeBase numbers the users a probe inserts on the shadow.
const probeBase = 5_000_000

// side runs ops on one of the two sets of tables. The encrypted side binds
// the handles of the users its inserts create; the shadow inserts them with
// the ids the encrypted side got, so the tables can be compared row by row.
type side struct {
	h     *harness
	enc   bool
	probe bool // a shadow run that is rolled back: handles get fresh ids
}

// ref resolves an owner or user reference.
func (s *side) ref(w who) uint {
	if w >= 0 {
		return uint(w)
	}
	if id, ok := s.h.handles[int(-w)]; ok {
		return id
	}
	return unboundID
}

// newUserID returns the id to insert for a user created under w: a
// literal; for a handle, 0 on the encrypted side (the insert assigns it),
// the id it got there on the shadow, and a fresh id in a probe; the id of
// the user a handle already names, on every side.
func (s *side) newUserID(w who) uint {
	if w >= 0 {
		return uint(w)
	}
	if id, ok := s.h.handles[int(-w)]; ok {
		return id
	}
	if s.enc {
		return 0
	}
	s.h.probeSeq++
	return probeBase + s.h.probeSeq
}

// bind records the id the encrypted side's insert assigned to handle w. A
// handle is bound once: a later op naming it names that user.
func (s *side) bind(w who, id uint) {
	if !s.enc || w >= 0 || id == 0 {
		return
	}
	if _, done := s.h.handles[int(-w)]; done {
		return
	}
	s.h.handles[int(-w)] = id
	s.h.handleOf[id] = int(-w)
}

func clonePtr(p *string) *string {
	if p == nil {
		return nil
	}
	v := *p
	return &v
}

func (s *side) credVal(c opCred) DiffCred {
	return DiffCred{ID: c.ID, UserID: s.ref(c.Owner), Facility: c.Facility, Serial: c.Serial, Password: c.Password, APIKey: clonePtr(c.APIKey)}
}

// model returns a pointer to v as the side's credential type.
func (s *side) model(v DiffCred) any {
	if s.enc {
		return &v
	}
	sv := ShadowCred(v)
	return &sv
}

func (s *side) cred(c opCred) any { return s.model(s.credVal(c)) }

func (s *side) credSlice(cs []opCred) any {
	if s.enc {
		out := make([]DiffCred, len(cs))
		for i, c := range cs {
			out[i] = s.credVal(c)
		}
		return &out
	}
	out := make([]ShadowCred, len(cs))
	for i, c := range cs {
		out[i] = ShadowCred(s.credVal(c))
	}
	return &out
}

func (s *side) credPtrs(cs []opCred) []any {
	out := make([]any, len(cs))
	for i, c := range cs {
		out[i] = s.cred(c)
	}
	return out
}

// patch returns the struct argument of Updates: the fields named in set.
func (s *side) patch(set []kv) any {
	var v DiffCred
	for _, a := range set {
		switch a.K {
		case "Facility":
			v.Facility, _ = a.V.(string)
		case "Serial":
			v.Serial, _ = a.V.(string)
		case "Password":
			v.Password, _ = a.V.(string)
		case "APIKey":
			if x, ok := a.V.(string); ok {
				v.APIKey = &x
			}
		case "UserID":
			if w, ok := a.V.(who); ok {
				v.UserID = s.ref(w)
			}
		}
	}
	if s.enc {
		return v
	}
	return ShadowCred(v)
}

func (s *side) userVal(u opUser, id uint, creds []opCred) any {
	if s.enc {
		v := &DiffUser{ID: id, Name: u.Name, Email: u.Email, Phone: clonePtr(u.Phone)}
		for _, c := range creds {
			v.Credentials = append(v.Credentials, s.credVal(c))
		}
		return v
	}
	v := &ShadowUser{ID: id, Name: u.Name, Email: u.Email, Phone: clonePtr(u.Phone)}
	for _, c := range creds {
		v.Credentials = append(v.Credentials, ShadowCred(s.credVal(c)))
	}
	return v
}

// newUser is a user about to be inserted; user, one that exists.
func (s *side) newUser(u opUser, creds []opCred) any { return s.userVal(u, s.newUserID(u.ID), creds) }
func (s *side) user(u opUser) any                    { return s.userVal(u, s.ref(u.ID), nil) }

func (s *side) userKey(id uint) any {
	if s.enc {
		return &DiffUser{ID: id}
	}
	return &ShadowUser{ID: id}
}

func (s *side) userPatch(set []kv) any {
	var v DiffUser
	for _, a := range set {
		switch a.K {
		case "Name":
			v.Name, _ = a.V.(string)
		case "Email":
			v.Email, _ = a.V.(string)
		case "Phone":
			if x, ok := a.V.(string); ok {
				v.Phone = &x
			}
		case "ID":
			if w, ok := a.V.(who); ok {
				v.ID = s.ref(w)
			}
		}
	}
	if s.enc {
		return v
	}
	return ShadowUser{ID: v.ID, Name: v.Name, Email: v.Email, Phone: v.Phone}
}

func userIDOf(v any) uint {
	switch u := v.(type) {
	case *DiffUser:
		return u.ID
	case *ShadowUser:
		return u.ID
	}
	return 0
}

// val is the Go value an assignment passes to GORM.
func (s *side) val(v any) any {
	if w, ok := v.(who); ok {
		return s.ref(w)
	}
	return v
}

func (s *side) mapOf(set []kv) map[string]any {
	m := make(map[string]any, len(set))
	for _, a := range set {
		m[a.K] = s.val(a.V)
	}
	return m
}

// credQuery returns the statement an update of credentials starts from.
func (s *side) credQuery(db *gorm.DB, op diffOp) (*gorm.DB, error) {
	switch op.Via {
	case "loaded":
		m := s.model(DiffCred{})
		if err := db.First(m, op.ID).Error; err != nil {
			return nil, err
		}
		return db.Model(m), nil
	case "row", "stale":
		return db.Model(s.cred(*op.Cred)), nil
	case "key":
		return db.Model(s.model(DiffCred{ID: op.ID})), nil
	case "where":
		return db.Model(s.model(DiffCred{})).Where("id = ?", op.ID), nil
	case "owned":
		o := s.ref(op.Who)
		return db.Model(s.model(DiffCred{UserID: o})).Where("user_id = ?", o), nil
	case "owner":
		return db.Model(s.model(DiffCred{})).Where("user_id = ?", s.ref(op.Who)), nil
	}
	return nil, fmt.Errorf("difftest: credential op %s: unknown Via %q", op.Kind, op.Via)
}

// userQuery returns the statement an update of users starts from.
func (s *side) userQuery(db *gorm.DB, op diffOp) (*gorm.DB, error) {
	id := s.ref(op.Who)
	switch op.Via {
	case "loaded":
		m := s.userKey(0)
		if err := db.First(m, id).Error; err != nil {
			return nil, err
		}
		return db.Model(m), nil
	case "row":
		return db.Model(s.user(*op.User)), nil
	case "key":
		return db.Model(s.userKey(id)), nil
	case "where":
		return db.Model(s.userKey(0)).Where("id = ?", id), nil
	}
	return nil, fmt.Errorf("difftest: user op %s: unknown Via %q", op.Kind, op.Via)
}

func (s *side) conflict(op diffOp) clause.OnConflict {
	var oc clause.OnConflict
	switch op.Kind {
	case "upsert_id", "user_upsert":
		oc.Columns = []clause.Column{{Name: "id"}}
	case "upsert_serial":
		oc.Columns = []clause.Column{{Name: "serial"}}
	case "upsert_owner":
		oc.Columns = []clause.Column{{Name: "user_id"}}
	case "upsert_all":
		oc.UpdateAll = true
		return oc
	}
	switch op.Act {
	case "nothing":
		oc.DoNothing = true
	case "columns":
		oc.DoUpdates = clause.AssignmentColumns(op.Cols)
	case "assign":
		oc.DoUpdates = clause.Assignments(s.mapOf(op.Set))
	case "all":
		oc.UpdateAll = true
	}
	return oc
}

// run runs op on db, which is this side's handle or a transaction on it.
func (s *side) run(db *gorm.DB, op diffOp) error {
	switch op.Kind {
	case "create":
		return db.Create(withIdx(s.cred(*op.Cred), op.Idx)).Error
	case "create_map":
		return db.Model(s.model(DiffCred{})).Create(s.mapOf(op.Set)).Error
	case "create_batch":
		return db.CreateInBatches(s.credSlice(op.Creds), op.Batch).Error
	case "save":
		return db.Save(withIdx(s.cred(*op.Cred), op.Idx)).Error
	case "updates_struct", "updates_map", "update", "update_column", "update_columns":
		q, err := s.credQuery(db, op)
		if err != nil {
			return err
		}
		return s.update(q, op, withIdx(s.patch(op.Set), op.Idx))
	case "index_write":
		return s.indexWrite(db, op)
	case "match_delete", "user_match_delete", "match_update", "user_match_update":
		return s.matchWrite(db, op)
	case "upsert_id", "upsert_serial", "upsert_owner", "upsert_all":
		return db.Clauses(s.conflict(op)).Create(s.cred(*op.Cred)).Error
	case "delete":
		switch op.Via {
		case "key":
			return db.Delete(s.model(DiffCred{ID: op.ID})).Error
		case "ids":
			return db.Delete(s.model(DiffCred{}), op.IDs).Error
		case "owner":
			return db.Where("user_id = ?", s.ref(op.Who)).Delete(s.model(DiffCred{})).Error
		}

	case "first_or_create":
		// Found by the plain unique Serial; created with the id and owner
		// from Attrs (and the rest from Attrs or Assign); updated by Assign.
		c := s.credVal(*op.Cred)
		q := db.Where(s.model(DiffCred{Serial: c.Serial}))
		switch op.Via {
		case "attrs":
			q = q.Attrs(s.model(c))
		case "assign_struct":
			q = q.Attrs(s.model(DiffCred{ID: c.ID, UserID: c.UserID})).Assign(s.patch(op.Set))
		case "assign_map":
			q = q.Attrs(s.model(DiffCred{ID: c.ID, UserID: c.UserID})).Assign(s.mapOf(op.Set))
		}
		return q.FirstOrCreate(s.model(DiffCred{})).Error

	case "user_create":
		u := s.newUser(*op.User, op.Creds)
		if err := db.Create(withIdx(u, op.Idx)).Error; err != nil {
			return err
		}
		s.bind(op.User.ID, userIDOf(u))
		return nil
	case "user_batch":
		if s.enc {
			us := make([]DiffUser, len(op.Users))
			for i, u := range op.Users {
				us[i] = *s.newUser(u, nil).(*DiffUser)
			}
			if err := db.CreateInBatches(&us, op.Batch).Error; err != nil {
				return err
			}
			for i, u := range op.Users {
				s.bind(u.ID, us[i].ID)
			}
			return nil
		}
		us := make([]ShadowUser, len(op.Users))
		for i, u := range op.Users {
			us[i] = *s.newUser(u, nil).(*ShadowUser)
		}
		return db.CreateInBatches(&us, op.Batch).Error
	case "user_save":
		u := s.newUser(*op.User, nil)
		if op.Via == "existing" {
			u = s.user(*op.User)
		}
		if err := db.Save(withIdx(u, op.Idx)).Error; err != nil {
			return err
		}
		s.bind(op.User.ID, userIDOf(u))
		return nil
	case "user_upsert":
		u := s.newUser(*op.User, nil)
		if op.Via == "existing" {
			u = s.user(*op.User)
		}
		if err := db.Clauses(s.conflict(op)).Create(u).Error; err != nil {
			return err
		}
		s.bind(op.User.ID, userIDOf(u))
		return nil
	case "user_updates_struct", "user_updates_map", "user_update", "user_update_column":
		q, err := s.userQuery(db, op)
		if err != nil {
			return err
		}
		return s.update(q, op, withIdx(s.userPatch(op.Set), op.Idx))
	case "user_index_write":
		return s.indexWrite(db, op)
	case "user_delete":
		return db.Delete(s.userKey(s.ref(op.Who))).Error

	case "assoc_append", "assoc_replace", "assoc_delete", "assoc_clear":
		parent := s.userKey(s.ref(op.Who))
		if op.Via == "loaded" {
			parent = s.userKey(0)
			if err := db.First(parent, s.ref(op.Who)).Error; err != nil {
				return err
			}
		}
		a := db.Model(parent).Association("Credentials")
		if op.Unscoped {
			a = a.Unscoped()
		}
		args := s.credPtrs(op.Creds)
		switch op.Kind {
		case "assoc_append":
			return a.Append(args...)
		case "assoc_replace":
			return a.Replace(args...)
		case "assoc_delete":
			return a.Delete(args...)
		default:
			return a.Clear()
		}

	case "shred":
		if !s.enc {
			return nil // the shadow has no keys to destroy
		}
		return envelope.Shred(db, s.ref(op.Who))

	case "tx":
		a, b := len(op.Sub), len(op.Sub)
		if strings.HasPrefix(op.Mode, "savepoint") {
			a, b = op.SP[0], op.SP[1]
		}
		return db.Transaction(func(tx *gorm.DB) error {
			for _, sub := range op.Sub[:a] {
				if err := s.run(tx, sub); err != nil {
					return err
				}
			}
			if a < b || strings.HasPrefix(op.Mode, "savepoint") {
				if err := tx.SavePoint("diff_sp").Error; err != nil {
					return err
				}
				for _, sub := range op.Sub[a:b] {
					_ = s.run(tx, sub) // undone below, whatever it did
				}
				if err := tx.RollbackTo("diff_sp").Error; err != nil {
					return err
				}
			}
			for _, sub := range op.Sub[b:] {
				if err := s.run(tx, sub); err != nil {
					return err
				}
			}
			if strings.HasSuffix(op.Mode, "rollback") {
				return errDiffRollback
			}
			return nil
		})
	}
	return fmt.Errorf("difftest: unknown op kind %q", op.Kind)
}

// update runs the update forms on q; patch is the struct argument.
func (s *side) update(q *gorm.DB, op diffOp, patch any) error {
	switch strings.TrimPrefix(op.Kind, "user_") {
	case "updates_struct":
		return q.Updates(patch).Error
	case "updates_map":
		return q.Updates(s.mapOf(op.Set)).Error
	case "update":
		return q.Update(op.Set[0].K, s.val(op.Set[0].V)).Error
	case "update_column":
		return q.UpdateColumn(op.Set[0].K, s.val(op.Set[0].V)).Error
	case "update_columns":
		if op.Act == "struct" {
			return q.UpdateColumns(patch).Error
		}
		return q.UpdateColumns(s.mapOf(op.Set)).Error
	}
	return fmt.Errorf("difftest: unknown update kind %q", op.Kind)
}

// ---- printing ----

// GoString prints the op as a Go expression, for a regression test.
func (o diffOp) GoString() string {
	var f []string
	add := func(name, v string) { f = append(f, name+": "+v) }
	add("Kind", strconv.Quote(o.Kind))
	if o.Via != "" {
		add("Via", strconv.Quote(o.Via))
	}
	if o.ID != 0 {
		add("ID", fmt.Sprint(o.ID))
	}
	if o.IDs != nil {
		var ids []string
		for _, id := range o.IDs {
			ids = append(ids, fmt.Sprint(id))
		}
		add("IDs", "[]uint{"+strings.Join(ids, ", ")+"}")
	}
	if o.Who != 0 {
		add("Who", fmt.Sprint(int(o.Who)))
	}
	if o.Cred != nil {
		add("Cred", "&"+o.Cred.GoString())
	}
	if o.Creds != nil {
		var cs []string
		for _, c := range o.Creds {
			cs = append(cs, strings.TrimPrefix(c.GoString(), "opCred"))
		}
		add("Creds", "[]opCred{"+strings.Join(cs, ", ")+"}")
	}
	if o.User != nil {
		add("User", "&"+o.User.GoString())
	}
	if o.Users != nil {
		var us []string
		for _, u := range o.Users {
			us = append(us, strings.TrimPrefix(u.GoString(), "opUser"))
		}
		add("Users", "[]opUser{"+strings.Join(us, ", ")+"}")
	}
	if o.Set != nil {
		var ss []string
		for _, a := range o.Set {
			ss = append(ss, "{"+strconv.Quote(a.K)+", "+goValue(a.V)+"}")
		}
		add("Set", "[]kv{"+strings.Join(ss, ", ")+"}")
	}
	if o.Cols != nil {
		add("Cols", fmt.Sprintf("%#v", o.Cols))
	}
	if o.Act != "" {
		add("Act", strconv.Quote(o.Act))
	}
	if o.Batch != 0 {
		add("Batch", fmt.Sprint(o.Batch))
	}
	if o.Unscoped {
		add("Unscoped", "true")
	}
	if o.Mode != "" {
		add("Mode", strconv.Quote(o.Mode))
	}
	if o.SP != [2]int{} {
		add("SP", fmt.Sprintf("[2]int{%d, %d}", o.SP[0], o.SP[1]))
	}
	if o.Idx != "" {
		add("Idx", strconv.Quote(o.Idx))
	}
	if o.Match != "" {
		add("Match", strconv.Quote(o.Match))
	}
	if o.Sub != nil {
		var ss []string
		for _, s := range o.Sub {
			ss = append(ss, strings.TrimPrefix(s.GoString(), "diffOp"))
		}
		add("Sub", "[]diffOp{"+strings.Join(ss, ", ")+"}")
	}
	return "diffOp{" + strings.Join(f, ", ") + "}"
}

func (c opCred) GoString() string {
	f := []string{"ID: " + fmt.Sprint(c.ID)}
	if c.Owner != 0 {
		f = append(f, "Owner: "+fmt.Sprint(int(c.Owner)))
	}
	if c.Facility != "" {
		f = append(f, "Facility: "+strconv.Quote(c.Facility))
	}
	if c.Serial != "" {
		f = append(f, "Serial: "+strconv.Quote(c.Serial))
	}
	if c.Password != "" {
		f = append(f, "Password: "+strconv.Quote(c.Password))
	}
	if c.APIKey != nil {
		f = append(f, "APIKey: ptr("+strconv.Quote(*c.APIKey)+")")
	}
	return "opCred{" + strings.Join(f, ", ") + "}"
}

func (u opUser) GoString() string {
	f := []string{"ID: " + fmt.Sprint(int(u.ID))}
	if u.Name != "" {
		f = append(f, "Name: "+strconv.Quote(u.Name))
	}
	if u.Email != "" {
		f = append(f, "Email: "+strconv.Quote(u.Email))
	}
	if u.Phone != nil {
		f = append(f, "Phone: ptr("+strconv.Quote(*u.Phone)+")")
	}
	return "opUser{" + strings.Join(f, ", ") + "}"
}

func goValue(v any) string {
	switch x := v.(type) {
	case nil:
		return "nil"
	case string:
		return strconv.Quote(x)
	case who:
		return fmt.Sprintf("who(%d)", int(x))
	}
	return fmt.Sprintf("%#v", v)
}

// ---- generating ops ----

// credIDs is the pool of credential ids: small, so that creates, saves and
// upserts meet existing rows.
const credIDs = 40

// maxUsers is about how many users the generator keeps: each step reads
// every row, so the tables stay small.
const maxUsers = 12

// bareBase numbers the owners that are not users (no row in diff_users
// unless an op creates one with that id). Far above the ids the inserts
// assign, on every dialect.
const bareBase = 1_000_000

// gen picks ops from the shadow's current state.
type gen struct {
	r    *rand.Rand
	h    *harness
	n    int // numbers values, so a failure report shows which op wrote what
	skip map[string]bool
}

func (g *gen) chance(pct int) bool { return g.r.IntN(100) < pct }

func pick[T any](r *rand.Rand, xs []T) T { return xs[r.IntN(len(xs))] }

func (g *gen) word(prefix string) string {
	g.n++
	switch g.r.IntN(10) {
	case 0:
		return ""
	case 1:
		return fmt.Sprintf("%s-ü€-%d", prefix, g.n)
	case 2:
		return fmt.Sprintf("%s🔑%d", prefix, g.n)
	}
	return fmt.Sprintf("%s%d", prefix, g.n)
}

func (g *gen) optWord(prefix string) *string {
	if g.chance(30) {
		return nil
	}
	s := g.word(prefix)
	return &s
}

func (g *gen) serial() string {
	g.n++
	return fmt.Sprintf("s%d", g.n)
}

// whoOf names an existing owner id in an op.
func (g *gen) whoOf(id uint) who {
	if h, ok := g.h.handleOf[id]; ok {
		return who(-h)
	}
	return who(id)
}

func (g *gen) liveUsers() []uint {
	var out []uint
	for _, id := range g.h.userIDs {
		if !g.h.shredded[id] {
			out = append(out, id)
		}
	}
	return out
}

// owner picks an owner for a credential: mostly a live bare owner or a
// user, now and then a shredded owner, a new owner, or none.
func (g *gen) owner() who {
	x := g.r.IntN(100)
	switch {
	case x < 3:
		return 0
	case x < 8 && len(g.h.shreddedList) > 0:
		return g.whoOf(pick(g.r, g.h.shreddedList))
	case x < 10:
		return who(g.h.freshBare()) // a first write: the DEK is created by this op
	case x < 45:
		if us := g.liveUsers(); len(us) > 0 {
			return g.whoOf(pick(g.r, us))
		}
	}
	return who(g.bareOwner())
}

// bareOwner picks one of the live owners that need not be users; one that
// was shredded (as a user, say) leaves the pool.
func (g *gen) bareOwner() uint {
	i := g.r.IntN(len(g.h.bare))
	if g.h.shredded[g.h.bare[i]] {
		g.h.bare[i] = g.h.freshBare()
	}
	return g.h.bare[i]
}

func (g *gen) otherOwner(not uint) who {
	for range 10 {
		if o := g.owner(); o != 0 && g.h.enc.ref(o) != not {
			return o
		}
	}
	return who(g.bareOwner())
}

// existingCred returns a random existing credential id, mostly one whose
// owner is not shredded, or false.
func (g *gen) existingCred() (uint, bool) {
	if len(g.h.credIDs) == 0 {
		return 0, false
	}
	if g.chance(85) {
		var live []uint
		for _, id := range g.h.credIDs {
			if !g.h.shredded[g.h.creds[id].UserID] {
				live = append(live, id)
			}
		}
		if len(live) > 0 {
			return pick(g.r, live), true
		}
	}
	return pick(g.r, g.h.credIDs), true
}

// credID returns a credential id: an existing one with probability pct,
// else a free one if there is any.
func (g *gen) credID(pct int) uint {
	if id, ok := g.existingCred(); ok && g.chance(pct) {
		return id
	}
	var free []uint
	for id := uint(1); id <= credIDs; id++ {
		if _, taken := g.h.creds[id]; !taken {
			free = append(free, id)
		}
	}
	if len(free) > 0 {
		return pick(g.r, free)
	}
	return uint(1 + g.r.IntN(credIDs))
}

func (g *gen) existingSerial() string {
	if id, ok := g.existingCred(); ok {
		return g.h.creds[id].Serial
	}
	return g.serial()
}

// rowOf returns the current row of credential id as an op writes it.
func (g *gen) rowOf(id uint) opCred {
	c := g.h.creds[id]
	return opCred{ID: c.ID, Owner: g.whoOf(c.UserID), Facility: c.Facility, Serial: c.Serial, Password: c.Password, APIKey: clonePtr(c.APIKey)}
}

func (g *gen) newCred(id uint) opCred {
	c := opCred{ID: id, Owner: g.owner(), Facility: pick(g.r, []string{"lco", "soar", "gemini", ""}), Serial: g.serial(), Password: g.word("pw")}
	if g.chance(70) {
		c.APIKey = ptr(g.apiKey())
	}
	return c
}

// credValue is a value for column k of a credential map or Update.
func (g *gen) credValue(k string, cur uint) any {
	switch k {
	case "password", "Password":
		if g.chance(5) {
			return nil
		}
		return g.word("pw")
	case "api_key", "APIKey":
		if g.chance(25) {
			return nil
		}
		return g.apiKey()
	case "facility", "Facility":
		return g.word("fac")
	case "serial", "Serial":
		if g.chance(20) {
			return g.existingSerial()
		}
		return g.serial()
	case "user_id", "UserID":
		switch x := g.r.IntN(10); {
		case x < 4:
			return g.whoOf(cur)
		case x < 8:
			return g.otherOwner(cur)
		case x < 9:
			return who(0)
		}
		return nil
	}
	panic("difftest: no value for " + k)
}

var credCols = [][2]string{{"password", "Password"}, {"api_key", "APIKey"}, {"facility", "Facility"}, {"serial", "Serial"}, {"user_id", "UserID"}}

// credSet picks 1..3 columns of a credential and values for them, named by
// column or by field.
func (g *gen) credSet(cur uint, owner bool) []kv {
	n := 1 + g.r.IntN(3)
	cols := slices.Clone(credCols)
	if !owner || !g.chance(35) {
		cols = cols[:4]
	}
	g.r.Shuffle(len(cols), func(i, j int) { cols[i], cols[j] = cols[j], cols[i] })
	if owner && len(cols) == 5 {
		// the owner column is in; keep it in the first n
		i := slices.IndexFunc(cols, func(c [2]string) bool { return c[0] == "user_id" })
		cols[0], cols[i] = cols[i], cols[0]
	}
	var set []kv
	for _, c := range cols[:min(n, len(cols))] {
		k := c[g.r.IntN(2)]
		set = append(set, kv{k, g.credValue(k, cur)})
	}
	return set
}

// credPatch picks the fields of a struct patch (zero values are skipped by
// GORM, so mostly non-zero).
func (g *gen) credPatch(cur uint) []kv {
	var set []kv
	for _, f := range []string{"Password", "APIKey", "Facility", "Serial"} {
		if g.chance(45) {
			v := g.credValue(f, cur)
			if v == nil {
				v = ""
			}
			set = append(set, kv{f, v})
		}
	}
	if g.chance(15) {
		set = append(set, kv{"UserID", g.otherOwner(cur)})
	}
	if len(set) == 0 {
		set = append(set, kv{"Password", g.word("pw")})
	}
	return set
}

func (g *gen) userValue(k string, cur uint) any {
	switch k {
	case "name", "Name":
		return g.word("name")
	case "email", "Email":
		if g.chance(5) {
			return nil
		}
		return g.email()
	case "phone", "Phone":
		if g.chance(25) {
			return nil
		}
		return g.word("tel")
	case "id", "ID":
		if g.chance(50) {
			return g.whoOf(cur)
		}
		return who(g.h.freshBare())
	}
	panic("difftest: no value for " + k)
}

func (g *gen) userSet(cur uint, owner bool) []kv {
	cols := [][2]string{{"name", "Name"}, {"email", "Email"}, {"phone", "Phone"}}
	g.r.Shuffle(len(cols), func(i, j int) { cols[i], cols[j] = cols[j], cols[i] })
	var set []kv
	if owner && g.chance(15) {
		k := pick(g.r, []string{"id", "ID"})
		set = append(set, kv{k, g.userValue(k, cur)})
	}
	for _, c := range cols[:1+g.r.IntN(3)] {
		k := c[g.r.IntN(2)]
		set = append(set, kv{k, g.userValue(k, cur)})
	}
	return set
}

func (g *gen) newUserRec(w who) opUser {
	return opUser{ID: w, Name: g.word("name"), Email: g.email(), Phone: g.optWord("tel")}
}

// handle reserves a new handle for a user whose id the insert assigns.
func (g *gen) handle() who {
	g.h.nextHandle++
	return who(-g.h.nextHandle)
}

// pickUser returns an existing user, now and then a shredded one.
func (g *gen) pickUser() (uint, bool) {
	us := g.liveUsers()
	if len(us) == 0 || (len(g.h.userIDs) > len(us) && g.chance(5)) {
		if len(g.h.userIDs) == 0 {
			return 0, false
		}
		return pick(g.r, g.h.userIDs), true
	}
	return pick(g.r, us), true
}

// weights of the op kinds.
var diffKinds = []struct {
	kind string
	w    int
}{
	{"create", 10}, {"create_map", 3}, {"create_batch", 4}, {"save", 6},
	{"updates_struct", 6}, {"updates_map", 8}, {"update", 6}, {"update_column", 3}, {"update_columns", 3},
	{"upsert_id", 4}, {"upsert_serial", 4}, {"upsert_owner", 1}, {"upsert_all", 2},
	{"delete", 8}, {"first_or_create", 3}, {"read", 2},
	{"user_create", 5}, {"user_batch", 2}, {"user_save", 3}, {"user_updates_struct", 2}, {"user_updates_map", 3},
	{"user_update", 2}, {"user_update_column", 1}, {"user_upsert", 3}, {"user_delete", 2},
	{"assoc_append", 3}, {"assoc_replace", 2}, {"assoc_delete", 2}, {"assoc_clear", 1},
	{"tx", 4}, {"shred", 1},
	{"index_write", 3}, {"user_index_write", 2},
	{"match_delete", 2}, {"user_match_delete", 1}, {"match_update", 2}, {"user_match_update", 1},
}

var diffTotal = func() int {
	n := 0
	for _, k := range diffKinds {
		n += k.w
	}
	return n
}()

// next returns the next op, none of whose kinds is skipped.
func (g *gen) next() diffOp {
	for {
		op, ok := g.op(true)
		if ok && !op.matches(g.skip) {
			return op
		}
	}
}

func (g *gen) op(top bool) (diffOp, bool) {
	x := g.r.IntN(diffTotal)
	kind := ""
	for _, k := range diffKinds {
		if x < k.w {
			kind = k.kind
			break
		}
		x -= k.w
	}
	op := diffOp{Kind: kind}
	switch kind {
	case "create":
		c := g.newCred(g.credID(8))
		if g.chance(5) {
			c.Serial = g.existingSerial()
		}
		op.Cred = &c
		op.Idx = g.maybeIdx("diff_creds")
	case "create_map":
		c := g.newCred(g.credID(5))
		names := func(db, field string) string {
			if g.chance(50) {
				return field
			}
			return db
		}
		op.Set = []kv{{names("id", "ID"), who(c.ID)}, {names("serial", "Serial"), c.Serial}, {names("password", "Password"), c.Password}}
		if c.Owner != 0 || g.chance(50) {
			op.Set = append(op.Set, kv{names("user_id", "UserID"), c.Owner})
		}
		if g.chance(60) {
			op.Set = append(op.Set, kv{names("facility", "Facility"), c.Facility})
		}
		if c.APIKey != nil {
			op.Set = append(op.Set, kv{names("api_key", "APIKey"), *c.APIKey})
		}
	case "create_batch":
		n := 2 + g.r.IntN(5)
		seen := map[uint]bool{}
		for range n {
			id := g.credID(3)
			if seen[id] {
				continue
			}
			seen[id] = true
			op.Creds = append(op.Creds, g.newCred(id))
		}
		op.Batch = 2 + g.r.IntN(2)
	case "save":
		id := g.credID(70)
		c := g.newCred(id)
		if _, ok := g.h.creds[id]; ok {
			cur := g.h.creds[id].UserID
			c.Owner = g.whoOf(cur)
			switch x := g.r.IntN(10); {
			case x < 3:
				c.Owner = g.otherOwner(cur)
			case x < 4:
				c.Owner = 0
			}
			if g.chance(70) {
				c.Serial = g.h.creds[id].Serial
			}
		}
		op.Cred = &c
		op.Idx = g.maybeIdx("diff_creds")
	case "updates_struct", "updates_map", "update", "update_column", "update_columns":
		id, ok := g.existingCred()
		if !ok {
			return op, false
		}
		cur := g.h.creds[id].UserID
		op.Via = pick(g.r, []string{"loaded", "loaded", "row", "row", "row", "key", "where", "where", "owned", "owner", "stale"})
		switch op.Via {
		case "owned", "owner":
			op.Who = g.whoOf(cur)
		case "row":
			c := g.rowOf(id)
			op.Cred = &c
		case "stale":
			c := g.rowOf(id)
			c.Owner = g.otherOwner(cur)
			op.Cred = &c
		default:
			op.ID = id
		}
		switch kind {
		case "updates_struct":
			op.Set = g.credPatch(cur)
			op.Idx = g.maybeIdx("diff_creds")
		case "updates_map", "update_columns":
			op.Set = g.credSet(cur, true)
			if kind == "update_columns" && g.chance(30) {
				op.Act = "struct"
				op.Set = g.credPatch(cur)
			}
		default:
			op.Set = g.credSet(cur, true)[:1]
		}
	case "upsert_id", "upsert_serial", "upsert_owner", "upsert_all":
		var c opCred
		switch kind {
		case "upsert_id", "upsert_all":
			c = g.newCred(g.credID(75))
			if cur, ok := g.h.creds[c.ID]; ok && g.chance(50) {
				c.Owner = g.whoOf(cur.UserID)
			}
			if g.chance(15) {
				c.Serial = g.existingSerial()
			}
		case "upsert_serial":
			c = g.newCred(g.credID(15))
			if id, ok := g.existingCred(); ok && g.chance(75) {
				c.Serial = g.h.creds[id].Serial
				if g.chance(40) {
					c.Owner = g.whoOf(g.h.creds[id].UserID)
				}
			}
		case "upsert_owner":
			c = g.newCred(g.credID(30))
		}
		op.Cred = &c
		if kind != "upsert_all" {
			op.Act = pick(g.r, []string{"nothing", "columns", "columns", "assign", "all"})
			switch op.Act {
			case "columns":
				cols := []string{"password", "api_key", "facility", "serial", "user_id"}
				g.r.Shuffle(len(cols), func(i, j int) { cols[i], cols[j] = cols[j], cols[i] })
				op.Cols = cols[:1+g.r.IntN(3)]
				if g.chance(10) {
					op.Cols = append(op.Cols, "api_key_idx")
				}
			case "assign":
				op.Set = g.credSet(g.h.enc.ref(c.Owner), true)
				for i := range op.Set { // clause.Assignments takes column names
					for _, cc := range credCols {
						if op.Set[i].K == cc[1] {
							op.Set[i].K = cc[0]
						}
					}
				}
			}
		}
	case "delete":
		id, ok := g.existingCred()
		if !ok {
			return op, false
		}
		switch op.Via = pick(g.r, []string{"key", "key", "ids", "owner"}); op.Via {
		case "key":
			op.ID = id
		case "ids":
			op.IDs = []uint{id, g.credID(50)}
		case "owner":
			op.Who = g.whoOf(g.h.creds[id].UserID)
		}

	case "first_or_create":
		c := g.newCred(g.credID(5))
		if id, ok := g.existingCred(); ok && g.chance(60) {
			c.Serial = g.h.creds[id].Serial
		}
		op.Cred = &c
		switch op.Via = pick(g.r, []string{"attrs", "assign_struct", "assign_map"}); op.Via {
		case "assign_struct":
			op.Set = g.credPatch(g.h.enc.ref(c.Owner))
		case "assign_map":
			op.Set = g.credSet(g.h.enc.ref(c.Owner), true)
		}
	case "read":
		op.Via = pick(g.r, []string{"preload", "assoc_find"})
		if op.Via == "assoc_find" {
			id, ok := g.pickUser()
			if !ok {
				return op, false
			}
			op.Who = g.whoOf(id)
		}

	case "user_create":
		if len(g.h.userIDs) >= maxUsers && !g.chance(10) {
			return op, false
		}
		op.Via = "auto"
		u := g.newUserRec(g.handle())
		if g.chance(35) {
			op.Via = "id"
			u.ID = who(g.bareOwner())
			if g.chance(10) && len(g.h.userIDs) > 0 {
				// An id that is taken, as a literal: a handle here would
				// name a new user.
				u.ID = who(pick(g.r, g.h.userIDs))
			}
		}
		op.User = &u
		op.Idx = g.maybeIdx("diff_users")
		if g.chance(20) {
			for range 1 + g.r.IntN(2) {
				c := g.newCred(g.credID(10))
				c.Owner = 0 // GORM sets it from the new user
				if !slices.ContainsFunc(op.Creds, func(o opCred) bool { return o.ID == c.ID }) {
					op.Creds = append(op.Creds, c)
				}
			}
		}
	case "user_batch":
		if len(g.h.userIDs) >= maxUsers && !g.chance(10) {
			return op, false
		}
		for range 2 + g.r.IntN(3) {
			op.Users = append(op.Users, g.newUserRec(g.handle()))
		}
		op.Batch = 2
	case "user_save", "user_upsert":
		op.Via = "new"
		u := g.newUserRec(g.handle())
		if id, ok := g.pickUser(); ok && (g.chance(65) || len(g.h.userIDs) >= maxUsers) {
			op.Via = "existing"
			u.ID = g.whoOf(id)
		}
		op.User = &u
		if kind == "user_save" {
			op.Idx = g.maybeIdx("diff_users")
		}
		if kind == "user_upsert" {
			op.Act = pick(g.r, []string{"nothing", "columns", "columns", "assign", "all"})
			switch op.Act {
			case "columns":
				cols := []string{"name", "email", "phone"}
				g.r.Shuffle(len(cols), func(i, j int) { cols[i], cols[j] = cols[j], cols[i] })
				op.Cols = cols[:1+g.r.IntN(3)]
				if g.chance(10) {
					op.Cols = append(op.Cols, "email_idx")
				}
			case "assign":
				op.Set = g.userSet(g.h.enc.ref(u.ID), false)
				for i := range op.Set {
					op.Set[i].K = strings.ToLower(op.Set[i].K)
				}
			}
		}
	case "user_updates_struct", "user_updates_map", "user_update", "user_update_column":
		id, ok := g.pickUser()
		if !ok {
			return op, false
		}
		op.Via = pick(g.r, []string{"loaded", "row", "key", "key", "where"})
		op.Who = g.whoOf(id)
		if op.Via == "row" {
			u := g.h.users[id]
			op.User = &opUser{ID: g.whoOf(id), Name: u.Name, Email: u.Email, Phone: clonePtr(u.Phone)}
			op.Who = 0
		}
		switch kind {
		case "user_updates_struct":
			op.Idx = g.maybeIdx("diff_users")
			for _, a := range g.userSet(id, true) {
				if a.V == nil {
					a.V = ""
				}
				a.K = strings.ToUpper(a.K[:1]) + a.K[1:]
				if a.K == "Id" {
					a.K = "ID"
				}
				op.Set = append(op.Set, a)
			}
		case "user_updates_map":
			op.Set = g.userSet(id, true)
		default:
			op.Set = g.userSet(id, true)[:1]
		}
	case "user_delete":
		id, ok := g.pickUser()
		if !ok {
			return op, false
		}
		op.Who = g.whoOf(id)

	case "assoc_append", "assoc_replace", "assoc_delete", "assoc_clear":
		id, ok := g.pickUser()
		if !ok {
			return op, false
		}
		op.Who = g.whoOf(id)
		op.Via = pick(g.r, []string{"key", "key", "loaded"})
		op.Unscoped = g.chance(30)
		n := 1 + g.r.IntN(2)
		switch kind {
		case "assoc_replace":
			n = g.r.IntN(3)
		case "assoc_clear":
			n = 0
		}
		seen := map[uint]bool{}
		for range n {
			c := g.newCred(g.credID(0))
			if cid, ok := g.existingCred(); ok && (kind == "assoc_delete" || g.chance(50)) {
				c = g.rowOf(cid)
			}
			if !seen[c.ID] {
				seen[c.ID] = true
				op.Creds = append(op.Creds, c)
			}
		}
		if kind == "assoc_append" && len(op.Creds) == 0 {
			return op, false
		}

	case "tx":
		if !top {
			return op, false
		}
		n := 1 + g.r.IntN(4)
		shred := false
		for len(op.Sub) < n {
			sub, ok := g.op(false)
			// The shadow runs a match op by the shreds of the steps
			// before: none in the transaction before it.
			if ok && !(shred && strings.Contains(sub.Kind, "match_")) {
				op.Sub = append(op.Sub, sub)
				shred = shred || sub.Kind == "shred"
			}
		}
		op.Mode = pick(g.r, []string{"commit", "rollback", "savepoint", "savepoint", "savepoint_rollback"})
		if strings.HasPrefix(op.Mode, "savepoint") {
			a := g.r.IntN(n + 1)
			op.SP = [2]int{a, a + g.r.IntN(n-a+1)}
		}
	case "index_write", "user_index_write", "match_delete", "user_match_delete", "match_update", "user_match_update":
		return g.indexOp(op)
	case "shred":
		if g.chance(50) {
			return op, false // half as often as weight 1
		}
		if g.chance(60) || len(g.liveUsers()) == 0 {
			i := g.r.IntN(len(g.h.bare))
			op.Who = who(g.h.bare[i])
			g.h.bare[i] = g.h.freshBare() // the shredded owner leaves the pool
		} else {
			op.Who = g.whoOf(pick(g.r, g.liveUsers()))
		}
		if g.chance(3) {
			op.Who = 0
		}
	}
	return op, true
}
