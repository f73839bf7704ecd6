module github.com/gorm-envelope/envelope/bench

go 1.26

replace github.com/gorm-envelope/envelope => ../

require (
	github.com/bincyber/go-sqlcrypter v0.2.0
	github.com/fernet/fernet-go v0.0.0-20240119011108-303da6aec611
	github.com/gorm-envelope/envelope v0.0.0
	github.com/pkasila/gorm-crypto v1.0.3
	gorm.io/driver/postgres v1.6.3
	gorm.io/driver/sqlite v1.6.0
	gorm.io/gorm v1.31.2
)

require (
	github.com/jackc/pgpassfile v1.0.0 // indirect
	github.com/jackc/pgservicefile v0.0.0-20240606120523-5a60cdf6a761 // indirect
	github.com/jackc/pgx/v5 v5.10.0 // indirect
	github.com/jackc/puddle/v2 v2.2.2 // indirect
	github.com/jinzhu/inflection v1.0.0 // indirect
	github.com/jinzhu/now v1.1.5 // indirect
	github.com/mattn/go-sqlite3 v1.14.22 // indirect
	github.com/pkg/errors v0.9.1 // indirect
	golang.org/x/sync v0.17.0 // indirect
	golang.org/x/text v0.29.0 // indirect
)
