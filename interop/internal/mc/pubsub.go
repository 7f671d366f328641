package mc

import (
	"fmt"
	"strings"

	pubsubbroker "github.com/RichardKnop/machinery/v2/brokers/gcppubsub"
	brokeriface "github.com/RichardKnop/machinery/v2/brokers/iface"
	"github.com/RichardKnop/machinery/v2/config"
)

// PubSubURL splits gcppubsub://<project>/<subscription> as Machinery v1's BrokerFactory does.
func PubSubURL(url string) (project, subscription string, err error) {
	rest := strings.TrimPrefix(url, "gcppubsub://")
	parts := strings.Split(rest, "/")
	if rest == url || len(parts) != 2 || parts[0] == "" || parts[1] == "" {
		return "", "", fmt.Errorf("want gcppubsub://<project>/<subscription>, got %q", url)
	}
	return parts[0], parts[1], nil
}

// newV2PubSubBroker is v2's explicit constructor (v2 has no URL factories). With
// cnf.GCPPubSub nil it makes its own client with pubsub.NewClient(ctx, project), which
// honours PUBSUB_EMULATOR_HOST (the tests' pstest emulator), exactly as v1's factory does.
// Like v1, it fails unless the topic DefaultQueue and the subscription exist.
func newV2PubSubBroker(cnf *config.Config, url string) (brokeriface.Broker, error) {
	project, subscription, err := PubSubURL(url)
	if err != nil {
		return nil, err
	}
	return pubsubbroker.New(cnf, project, subscription)
}
