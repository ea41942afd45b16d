// Command grpc-gateway-peer serves mercato's CatalogService over HTTP/JSON with grpc-gateway:
// what a platform team would otherwise put in front of gRPC, measured by `make bench` next to
// the Python gateway on `GET /v1/products/{sku}`.
//
// The Go code of the protos is not committed: tools/grpc_gateway_peer.py generates it at build
// time from protos/ (the files the Python stubs come from) into the package imported below.
//
// The bearer token is not checked here: grpc-gateway passes the Authorization header on as
// `authorization` metadata and catalog verifies it, as it does behind the Python gateway.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/encoding/protojson"

	catalogv1 "mercato.local/grpcgatewaypeer/gen/mercato/catalog/v1"
)

const shutdownGrace = 5 * time.Second

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "HTTP address to serve (port 0: any free port)")
	backend := flag.String("backend", "", "catalog's gRPC address, host:port (required)")
	flag.Parse()
	if *backend == "" {
		flag.Usage()
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	mux := runtime.NewServeMux(
		// The Python gateway renders responses with protobuf's MessageToDict defaults
		// (lowerCamelCase names, unset fields left out): the same JSON from both.
		runtime.WithMarshalerOption(runtime.MIMEWildcard, &runtime.JSONPb{
			MarshalOptions:   protojson.MarshalOptions{EmitUnpopulated: false},
			UnmarshalOptions: protojson.UnmarshalOptions{DiscardUnknown: true},
		}),
		// Framed by Content-Length, as the Python gateway's answers are.
		runtime.WithWriteContentLength(),
	)
	dial := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	if err := catalogv1.RegisterCatalogServiceHandlerFromEndpoint(ctx, mux, *backend, dial); err != nil {
		log.Fatalf("grpc-gateway-peer: register CatalogService: %v", err)
	}

	listener, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("grpc-gateway-peer: listen: %v", err)
	}
	server := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		<-ctx.Done()
		graceful, cancel := context.WithTimeout(context.Background(), shutdownGrace)
		defer cancel()
		if err := server.Shutdown(graceful); err != nil {
			log.Printf("grpc-gateway-peer: shutdown: %v", err)
		}
	}()

	// The one line on stdout: callers wait for it and read the address (port 0 resolved).
	fmt.Printf("grpc-gateway-peer ready on http://%s, backend %s\n", listener.Addr(), *backend)
	if err := server.Serve(listener); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Fatalf("grpc-gateway-peer: serve: %v", err)
	}
	<-stopped
}
