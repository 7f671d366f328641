package mc

import (
	"flag"
	"testing"

	v1config "github.com/RichardKnop/machinery/v1/config"
	v2config "github.com/RichardKnop/machinery/v2/config"
)

func TestSchemeAWS(t *testing.T) {
	for u, want := range map[string]string{
		"http://127.0.0.1:5000/123456789012":               "sqs",
		"https://sqs.us-east-1.amazonaws.com/123456789012": "sqs",
		DynamoDBBackendURL:                                 "dynamodb",
		"http://dynamodb.local:8000":                       "dynamodb",
		"redis://127.0.0.1:6379/1":                         "redis",
		"amqp://guest:guest@127.0.0.1:5672/":               "amqp",
		"dynamodb://":                                      "",
		"sqs://127.0.0.1:5000/123456789012":                "",
	} {
		if got := Scheme(u); got != want {
			t.Errorf("Scheme(%q) = %q, want %q", u, got, want)
		}
	}
}

func TestAWSFlagsDefaults(t *testing.T) {
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	get := AWSFlags(fs)
	if err := fs.Parse([]string{"-sqs-wait-time", "1", "-dynamodb-endpoint", "http://h:1"}); err != nil {
		t.Fatal(err)
	}
	o := get()
	if err := o.fill("http://127.0.0.1:5000/123456789012"); err != nil {
		t.Fatal(err)
	}
	if o.SQSEndpoint != "http://127.0.0.1:5000" || o.DynamoDBEndpoint != "http://h:1" ||
		o.Region != "us-east-1" || o.WaitTimeSeconds != 1 || o.visibilityTimeout() != nil ||
		o.TaskStatesTable != "task_states" || o.GroupMetasTable != "group_metas" {
		t.Errorf("got %#v", o)
	}
}

// v2's SQS consumer reads cnf.SQS.VisibilityHeartBeat without a nil check:
// cnf.SQS must be set whatever the flags.
func TestConfigureV2AWSAlwaysSetsSQS(t *testing.T) {
	cnf := &v2config.Config{}
	o := Options{Broker: "http://127.0.0.1:5000/123456789012", Backend: DynamoDBBackendURL,
		AWS: AWSOptions{VisibilityTimeout: 4, VisibilityHeartBeat: true}}
	if err := o.AWS.fill(o.Broker); err != nil {
		t.Fatal(err)
	}
	configureV2AWS(cnf, o)
	if cnf.SQS == nil || cnf.SQS.Client == nil || *cnf.SQS.VisibilityTimeout != 4 || !cnf.SQS.VisibilityHeartBeat {
		t.Errorf("SQS: %#v", cnf.SQS)
	}
	if cnf.DynamoDB == nil || cnf.DynamoDB.Client == nil || cnf.DynamoDB.TaskStatesTable != "task_states" {
		t.Errorf("DynamoDB: %#v", cnf.DynamoDB)
	}
	cnf = &v2config.Config{}
	configureV2AWS(cnf, Options{Broker: "redis://h/0", Backend: "redis://h/0"})
	if cnf.SQS == nil || cnf.SQS.Client != nil {
		t.Errorf("SQS without an SQS broker: %#v", cnf.SQS)
	}
}

func TestConfigureV1AWSRefusesHeartbeat(t *testing.T) {
	cnf := &v1config.Config{}
	err := configureV1AWS(cnf, Options{Broker: "http://127.0.0.1:5000/123456789012",
		Backend: "redis://h/0", AWS: AWSOptions{VisibilityHeartBeat: true}})
	if err == nil {
		t.Fatal("v1 has no VisibilityHeartBeat: want an error")
	}
}
