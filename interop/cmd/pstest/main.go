// Command pstest serves Google's in-memory Pub/Sub fake (cloud.google.com/go/pubsub/pstest,
// the version Machinery's modules require) over gRPC on a TCP port, for the tests: Go
// (Machinery's gcppubsub broker) and Python (google-cloud-pubsub) clients reach it through
// PUBSUB_EMULATOR_HOST=<host>:<port>.
//
// Usage: pstest [-host 127.0.0.1] [-port 0]. Once listening it prints one line on stdout,
// "pstest listening on <host>:<port>", and serves until SIGINT/SIGTERM. Everything lives in
// memory: topics, subscriptions and messages are lost when it exits. Projects need no
// creation (every project id exists), so tests isolate themselves by project.
package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"

	"cloud.google.com/go/pubsub/pstest"
	pb "google.golang.org/genproto/googleapis/pubsub/v1"
	"google.golang.org/grpc"
)

func main() {
	host := flag.String("host", "127.0.0.1", "address to listen on")
	port := flag.Int("port", 0, "TCP port (0: any free port)")
	flag.Parse()

	// pstest.NewServer also listens on a random localhost port of its own; its GServer (the
	// fake's state and gRPC methods) is what gets served here, on the requested address.
	fake := pstest.NewServer()
	defer fake.Close()

	lis, err := net.Listen("tcp", net.JoinHostPort(*host, fmt.Sprint(*port)))
	if err != nil {
		fmt.Fprintf(os.Stderr, "pstest: %v\n", err)
		os.Exit(1)
	}
	srv := grpc.NewServer()
	pb.RegisterPublisherServer(srv, &fake.GServer)
	pb.RegisterSubscriberServer(srv, &fake.GServer)

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-stop
		srv.Stop()
	}()

	fmt.Printf("pstest listening on %s\n", lis.Addr())
	if err := srv.Serve(lis); err != nil {
		fmt.Fprintf(os.Stderr, "pstest: %v\n", err)
		os.Exit(1)
	}
}
