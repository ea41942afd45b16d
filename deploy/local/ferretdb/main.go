// Command ferretdb runs FerretDB 1.24 embedded, as the MongoDB wire-compatible server of
// Mercato's local stack (mercato_devstack builds it once into .state/cache/ferretdb).
//
// It exists because `go install github.com/FerretDB/FerretDB/cmd/ferretdb` builds a binary
// that panics at start without a generated build/version/version.txt; embedding the
// github.com/FerretDB/FerretDB/ferretdb package skips that check.
//
// The PostgreSQL URL is read from FERRETDB_POSTGRESQL_URL (or -postgresql-url) so that
// credentials do not show in the process list.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/FerretDB/FerretDB/ferretdb"
)

func main() {
	listen := flag.String("listen-addr", "127.0.0.1:27018", "TCP address to listen on")
	handler := flag.String("handler", "postgresql", "backend handler: postgresql or sqlite")
	pgURL := flag.String("postgresql-url", os.Getenv("FERRETDB_POSTGRESQL_URL"),
		"PostgreSQL URL for the postgresql handler (default: $FERRETDB_POSTGRESQL_URL)")
	sqliteURL := flag.String("sqlite-url", "file:data/", "SQLite URI (a directory) for the sqlite handler")
	logLevel := flag.String("log-level", "info", "debug, info, warn or error")
	flag.Parse()

	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintf(os.Stderr, "ferretdb: bad -log-level: %s\n", err)
		os.Exit(2)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

	if *handler == "postgresql" && *pgURL == "" {
		logger.Error("the postgresql handler needs -postgresql-url or FERRETDB_POSTGRESQL_URL")
		os.Exit(2)
	}

	f, err := ferretdb.New(&ferretdb.Config{
		Listener:      ferretdb.ListenerConfig{TCP: *listen},
		Logger:        logger,
		Handler:       *handler,
		PostgreSQLURL: *pgURL,
		SQLiteURL:     *sqliteURL,
	})
	if err != nil {
		logger.Error("cannot create FerretDB", "error", err)
		os.Exit(1)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	logger.Info("starting FerretDB", "listen", *listen, "handler", *handler)
	if err := f.Run(ctx); err != nil {
		logger.Error("FerretDB stopped with an error", "error", err)
		os.Exit(1)
	}
	logger.Info("FerretDB stopped")
}
