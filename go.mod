module github.com/gorm-envelope/envelope

go 1.26

require (
	github.com/fernet/fernet-go v0.0.0-20240119011108-303da6aec611
	github.com/go-gormigrate/gormigrate/v2 v2.1.5
	github.com/go-sql-driver/mysql v1.8.1
	github.com/rogpeppe/go-internal v1.16.0
	golang.org/x/sync v0.17.0
	golang.org/x/term v0.37.0
	golang.org/x/text v0.29.0
	gorm.io/driver/mysql v1.6.0
	gorm.io/driver/postgres v1.6.3
	gorm.io/driver/sqlite v1.6.0
	gorm.io/gorm v1.31.2
)

require (
	filippo.io/edwards25519 v1.1.0 // indirect
	github.com/jackc/pgpassfile v1.0.0 // indirect
	github.com/jackc/pgservicefile v0.0.0-20240606120523-5a60cdf6a761 // indirect
	github.com/jackc/pgx/v5 v5.10.0 // indirect
	github.com/jackc/puddle/v2 v2.2.2 // indirect
	github.com/jinzhu/inflection v1.0.0 // indirect
	github.com/jinzhu/now v1.1.5 // indirect
	github.com/mattn/go-sqlite3 v1.14.22 // indirect
	golang.org/x/sys v0.38.0 // indirect
	golang.org/x/tools v0.36.0 // indirect
)
