package mc

// The AWS services: Machinery's SQS broker and DynamoDB result backend, for
// v1 (aws-sdk-go v1, via its URL factories) and v2 (aws-sdk-go-v2, via the
// constructors). The SDK clients are built here and injected through
// config.SQSConfig.Client / config.DynamoDBConfig.Client, so they can point at
// an emulator (moto server): custom endpoint, static dummy credentials, a
// fixed region. Machinery itself never sees the endpoint: it builds queue
// URLs as cnf.Broker + "/" + queue, and the DynamoDB backend URL only selects
// the backend.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	v1aws "github.com/aws/aws-sdk-go/aws"
	v1credentials "github.com/aws/aws-sdk-go/aws/credentials"
	v1session "github.com/aws/aws-sdk-go/aws/session"
	v1dynamodb "github.com/aws/aws-sdk-go/service/dynamodb"
	v1sqs "github.com/aws/aws-sdk-go/service/sqs"

	v2aws "github.com/aws/aws-sdk-go-v2/aws"
	v2dynamodb "github.com/aws/aws-sdk-go-v2/service/dynamodb"
	v2sqs "github.com/aws/aws-sdk-go-v2/service/sqs"

	v1config "github.com/RichardKnop/machinery/v1/config"
	v2dynamodbbackend "github.com/RichardKnop/machinery/v2/backends/dynamodb"
	v2backendiface "github.com/RichardKnop/machinery/v2/backends/iface"
	v2brokeriface "github.com/RichardKnop/machinery/v2/brokers/iface"
	v2sqsbroker "github.com/RichardKnop/machinery/v2/brokers/sqs"
	v2config "github.com/RichardKnop/machinery/v2/config"
)

// Defaults of the AWS flags.
const (
	DefaultAWSRegion = "us-east-1"
	// Static dummy credentials: the programs talk to emulators (moto accepts
	// any key). Go's own default (the SDK credential chain) is not used.
	DummyAccessKeyID     = "testing"
	DummySecretAccessKey = "testing"
	// Machinery's default table names (config.defaultCnf).
	DefaultTaskStatesTable = "task_states"
	DefaultGroupMetasTable = "group_metas"
	// DynamoDBBackendURL is the result backend URL that selects Machinery's
	// DynamoDB backend (v1's BackendFactory wants the prefix
	// "https://dynamodb"; the URL is otherwise unused).
	DynamoDBBackendURL = "https://dynamodb.us-east-1.amazonaws.com"
)

// AWSOptions are the SQS broker's and the DynamoDB backend's settings:
// Machinery's config.SQSConfig and config.DynamoDBConfig fields, and where
// the injected SDK clients send their calls.
type AWSOptions struct {
	Region string
	// SQSEndpoint is the SQS API endpoint ("" = scheme://host of the broker URL).
	SQSEndpoint string
	// DynamoDBEndpoint is the DynamoDB API endpoint ("" = the SDK's default
	// for the region, i.e. real AWS).
	DynamoDBEndpoint string
	// SQS.WaitTimeSeconds (Machinery's default 0 = short polling: its receive
	// loop then calls ReceiveMessage back to back).
	WaitTimeSeconds int
	// SQS.VisibilityTimeout in seconds; < 0 = nil (the queue's own).
	VisibilityTimeout int
	// SQS.VisibilityHeartBeat (v2 only).
	VisibilityHeartBeat bool
	TaskStatesTable     string
	GroupMetasTable     string
}

// AWSFlags registers the -aws-region, -sqs-* and -dynamodb-* flags on fs.
// After fs.Parse, the returned function yields the options.
func AWSFlags(fs *flag.FlagSet) func() AWSOptions {
	var (
		region      = fs.String("aws-region", DefaultAWSRegion, "region of the injected SQS/DynamoDB clients")
		sqsEndpoint = fs.String("sqs-endpoint", "", "SQS API endpoint of the injected client (default: scheme://host of -broker)")
		ddbEndpoint = fs.String("dynamodb-endpoint", "", "DynamoDB API endpoint of the injected client (default: the SDK's, i.e. AWS)")
		waitTime    = fs.Int("sqs-wait-time", 0, "SQS.WaitTimeSeconds (long polling; Machinery's default 0 busy-loops)")
		visibility  = fs.Int("sqs-visibility-timeout", -1, "SQS.VisibilityTimeout in seconds (-1: nil, the queue's own)")
		heartbeat   = fs.Bool("sqs-visibility-heartbeat", false, "SQS.VisibilityHeartBeat (v2 only; needs -sqs-visibility-timeout)")
		taskTable   = fs.String("dynamodb-task-states-table", DefaultTaskStatesTable, "DynamoDB.TaskStatesTable")
		groupTable  = fs.String("dynamodb-group-metas-table", DefaultGroupMetasTable, "DynamoDB.GroupMetasTable")
	)
	return func() AWSOptions {
		return AWSOptions{
			Region: *region, SQSEndpoint: *sqsEndpoint, DynamoDBEndpoint: *ddbEndpoint,
			WaitTimeSeconds: *waitTime, VisibilityTimeout: *visibility,
			VisibilityHeartBeat: *heartbeat, TaskStatesTable: *taskTable, GroupMetasTable: *groupTable,
		}
	}
}

// IsSQSURL: Machinery's SQS broker URL is "https://sqs.<region>.amazonaws.com/<account>"
// or, for an emulator, any http(s) URL ending in the account ("http://127.0.0.1:5000/123456789012").
func IsSQSURL(u string) bool {
	return (strings.HasPrefix(u, "http://") || strings.HasPrefix(u, "https://")) && !IsDynamoDBURL(u)
}

// IsDynamoDBURL: the URLs that select Machinery's DynamoDB backend.
func IsDynamoDBURL(u string) bool {
	return strings.HasPrefix(u, "https://dynamodb") || strings.HasPrefix(u, "http://dynamodb")
}

func (o *AWSOptions) fill(broker string) error {
	if o.Region == "" {
		o.Region = DefaultAWSRegion
	}
	if o.TaskStatesTable == "" {
		o.TaskStatesTable = DefaultTaskStatesTable
	}
	if o.GroupMetasTable == "" {
		o.GroupMetasTable = DefaultGroupMetasTable
	}
	if o.SQSEndpoint == "" && IsSQSURL(broker) {
		ep, err := SQSEndpointOf(broker)
		if err != nil {
			return err
		}
		o.SQSEndpoint = ep
	}
	return nil
}

// SQSEndpointOf is scheme://host of an SQS broker URL (the account path dropped).
func SQSEndpointOf(broker string) (string, error) {
	u, err := url.Parse(broker)
	if err != nil || u.Host == "" {
		return "", fmt.Errorf("SQS broker URL %q: want scheme://host[:port]/<account>", broker)
	}
	return u.Scheme + "://" + u.Host, nil
}

func (o AWSOptions) visibilityTimeout() *int {
	if o.VisibilityTimeout < 0 {
		return nil
	}
	v := o.VisibilityTimeout
	return &v
}

// -- Machinery v1 (aws-sdk-go v1) ----------------------------------------------

func v1Session(region, endpoint string) (*v1session.Session, error) {
	c := &v1aws.Config{
		Region:      v1aws.String(region),
		Credentials: v1credentials.NewStaticCredentials(DummyAccessKeyID, DummySecretAccessKey, ""),
	}
	if endpoint != "" {
		c.Endpoint = v1aws.String(endpoint)
	}
	return v1session.NewSession(c)
}

// configureV1AWS sets cnf.SQS / cnf.DynamoDB (with injected clients) for the
// URLs that need them. v1's BrokerFactory accepts a broker URL that does not
// start with "https://sqs" only when DISABLE_STRICT_SQS_CHECK is set (its own
// switch for emulators), so it is set here for such URLs.
func configureV1AWS(cnf *v1config.Config, o Options) error {
	if o.AWS.VisibilityHeartBeat {
		return errors.New("-sqs-visibility-heartbeat: Machinery v1 has no SQS.VisibilityHeartBeat")
	}
	if IsSQSURL(o.Broker) {
		sess, err := v1Session(o.AWS.Region, o.AWS.SQSEndpoint)
		if err != nil {
			return fmt.Errorf("SQS session: %v", err)
		}
		cnf.SQS = &v1config.SQSConfig{
			Client:            v1sqs.New(sess),
			WaitTimeSeconds:   o.AWS.WaitTimeSeconds,
			VisibilityTimeout: o.AWS.visibilityTimeout(),
		}
		if !strings.HasPrefix(o.Broker, "https://sqs") {
			if err := os.Setenv("DISABLE_STRICT_SQS_CHECK", "1"); err != nil {
				return err
			}
		}
	}
	if IsDynamoDBURL(o.Backend) {
		sess, err := v1Session(o.AWS.Region, o.AWS.DynamoDBEndpoint)
		if err != nil {
			return fmt.Errorf("DynamoDB session: %v", err)
		}
		cnf.DynamoDB = &v1config.DynamoDBConfig{
			Client:          v1dynamodb.New(sess),
			TaskStatesTable: o.AWS.TaskStatesTable,
			GroupMetasTable: o.AWS.GroupMetasTable,
		}
	}
	return nil
}

// -- Machinery v2 (aws-sdk-go-v2) ----------------------------------------------

func v2Credentials() v2aws.CredentialsProvider {
	return v2aws.CredentialsProviderFunc(func(context.Context) (v2aws.Credentials, error) {
		return v2aws.Credentials{AccessKeyID: DummyAccessKeyID, SecretAccessKey: DummySecretAccessKey,
			Source: "interop static"}, nil
	})
}

func v2SQSClient(o AWSOptions) *v2sqs.Client {
	opts := v2sqs.Options{Region: o.Region, Credentials: v2Credentials()}
	if o.SQSEndpoint != "" {
		opts.BaseEndpoint = v2aws.String(o.SQSEndpoint)
	}
	return v2sqs.New(opts)
}

func v2DynamoDBClient(o AWSOptions) *v2dynamodb.Client {
	opts := v2dynamodb.Options{Region: o.Region, Credentials: v2Credentials()}
	if o.DynamoDBEndpoint != "" {
		opts.BaseEndpoint = v2aws.String(o.DynamoDBEndpoint)
	}
	return v2dynamodb.New(opts)
}

// configureV2AWS sets cnf.SQS and cnf.DynamoDB. cnf.SQS is always set: v2's
// SQS consumer reads cnf.SQS.VisibilityHeartBeat without a nil check.
func configureV2AWS(cnf *v2config.Config, o Options) {
	cnf.SQS = &v2config.SQSConfig{
		WaitTimeSeconds:     o.AWS.WaitTimeSeconds,
		VisibilityTimeout:   o.AWS.visibilityTimeout(),
		VisibilityHeartBeat: o.AWS.VisibilityHeartBeat,
	}
	cnf.DynamoDB = &v2config.DynamoDBConfig{
		TaskStatesTable: o.AWS.TaskStatesTable,
		GroupMetasTable: o.AWS.GroupMetasTable,
	}
	if IsSQSURL(o.Broker) {
		cnf.SQS.Client = v2SQSClient(o.AWS)
	}
	if IsDynamoDBURL(o.Backend) {
		cnf.DynamoDB.Client = v2DynamoDBClient(o.AWS)
	}
}

func newV2SQSBroker(cnf *v2config.Config) (v2brokeriface.Broker, error) {
	return v2sqsbroker.New(cnf)
}

func newV2DynamoDBBackend(cnf *v2config.Config) (v2backendiface.Backend, error) {
	return v2dynamodbbackend.New(cnf)
}

// -- start-up checks --------------------------------------------------------------

// CheckSQSQueue fails unless the queue broker + "/" + queue answers
// GetQueueAttributes (Machinery never creates queues: a worker on a missing
// queue only logs receive errors, forever). It retries until timeout.
func CheckSQSQueue(o AWSOptions, broker, queue string, timeout time.Duration) error {
	if err := o.fill(broker); err != nil {
		return err
	}
	c := v2SQSClient(o)
	qurl := broker + "/" + queue
	var err error
	for deadline := time.Now().Add(timeout); ; {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err = c.GetQueueAttributes(ctx, &v2sqs.GetQueueAttributesInput{QueueUrl: v2aws.String(qurl)})
		cancel()
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("SQS queue %s: %v", qurl, err)
	}
	return nil
}

// CheckDynamoDBTables fails unless both tables exist (Machinery only logs it).
func CheckDynamoDBTables(o AWSOptions, timeout time.Duration) error {
	if err := o.fill(""); err != nil {
		return err
	}
	c := v2DynamoDBClient(o)
	var err error
	for deadline := time.Now().Add(timeout); ; {
		err = nil
		for _, t := range []string{o.TaskStatesTable, o.GroupMetasTable} {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, err = c.DescribeTable(ctx, &v2dynamodb.DescribeTableInput{TableName: v2aws.String(t)})
			cancel()
			if err != nil {
				err = fmt.Errorf("DynamoDB table %s: %v", t, err)
				break
			}
		}
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// AWSEvent is the "sqs"/"dynamodb" members of mcworker's ready line (nil
// when the URL does not use the service).
func AWSEvent(o AWSOptions, broker, backend string) (sqs, dynamodb interface{}) {
	_ = o.fill(broker)
	if IsSQSURL(broker) {
		var vt interface{}
		if v := o.visibilityTimeout(); v != nil {
			vt = *v
		}
		sqs = map[string]interface{}{
			"endpoint": o.SQSEndpoint, "region": o.Region, "wait_time_seconds": o.WaitTimeSeconds,
			"visibility_timeout": vt, "visibility_heartbeat": o.VisibilityHeartBeat,
		}
	}
	if IsDynamoDBURL(backend) {
		dynamodb = map[string]interface{}{
			"endpoint": o.DynamoDBEndpoint, "region": o.Region,
			"task_states_table": o.TaskStatesTable, "group_metas_table": o.GroupMetasTable,
		}
	}
	return sqs, dynamodb
}
