// A grpc-go round_robin client for meshless's throughput benchmark
// (integration/benches/throughput.rs), built from Debian's golang-google-grpc-dev in GOPATH
// mode. It is the peer a grpc-go user would compare against: one ClientConn over the given
// addresses (a manual resolver), the round_robin policy from the default service config,
// and CONCURRENCY goroutines calling grpc.health.v1.Health/Check until CALLS calls are done.
//
//	rrclient ADDR,ADDR,... WARMUP CALLS CONCURRENCY ROUNDS
//
// It waits for every address to be connected (the warm-up calls), then runs ROUNDS
// measured rounds, each started by a line on stdin, and prints "calls failed seconds" per
// round on stdout, so one process (and its connections) serves every round, as the Rust
// clients' channels do.
package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
)

func main() {
	if len(os.Args) != 6 {
		fmt.Fprintln(os.Stderr, "usage: rrclient ADDR,ADDR,... WARMUP CALLS CONCURRENCY ROUNDS")
		os.Exit(2)
	}
	addrs := strings.Split(os.Args[1], ",")
	warmup := number(os.Args[2])
	calls := number(os.Args[3])
	concurrency := number(os.Args[4])
	rounds := number(os.Args[5])

	r := manual.NewBuilderWithScheme("bench")
	var state resolver.State
	for _, a := range addrs {
		state.Addresses = append(state.Addresses, resolver.Address{Addr: a})
	}
	r.InitialState(state)
	cc, err := grpc.Dial("bench:///fleet", grpc.WithInsecure(), grpc.WithResolvers(r),
		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"round_robin":{}}]}`))
	if err != nil {
		fmt.Fprintln(os.Stderr, "dial:", err)
		os.Exit(1)
	}
	defer cc.Close()
	client := healthpb.NewHealthClient(cc)

	if _, failed, _ := run(client, warmup, concurrency); failed > 0 {
		fmt.Fprintln(os.Stderr, "warm-up calls failed:", failed)
		os.Exit(1)
	}
	stdin := bufio.NewScanner(os.Stdin)
	for i := 0; i < rounds; i++ {
		if !stdin.Scan() {
			return
		}
		done, failed, elapsed := run(client, calls, concurrency)
		fmt.Printf("%d %d %.6f\n", done, failed, elapsed.Seconds())
	}
}

// run makes `calls` calls from `concurrency` goroutines and times them.
func run(client healthpb.HealthClient, calls, concurrency int) (int, int64, time.Duration) {
	left := int64(calls)
	var failed int64
	var wg sync.WaitGroup
	start := time.Now()
	for i := 0; i < concurrency; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for atomic.AddInt64(&left, -1) >= 0 {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				if _, err := client.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
					atomic.AddInt64(&failed, 1)
				}
				cancel()
			}
		}()
	}
	wg.Wait()
	return calls, failed, time.Since(start)
}

func number(s string) int {
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		fmt.Fprintln(os.Stderr, "not a count:", s)
		os.Exit(2)
	}
	return n
}
