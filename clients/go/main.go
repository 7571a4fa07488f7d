// Command inspect-client calls rpi.inspection.v1.InspectionService (Inspect or InspectStream)
// and prints the progress events, the decision and the per-question answers.
//
// It is written against the APIv1 Go protobuf runtime (github.com/golang/protobuf) and
// grpc-go 1.33 so that it builds offline with Debian's packages; see README.md for building it
// with current stubs from buf instead.
//
// Exit status: 0 on success, the numeric gRPC status code (1-16) when the call fails, 64 on a
// usage error: the same as the Python CLI and the Java example (docs/errors.md).
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"io/ioutil"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/golang/protobuf/ptypes"
	"github.com/golang/protobuf/ptypes/duration"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	inspectionv1 "github.com/rpi-platform/rpi/gen/go/rpi/inspection/v1"
)

const exitUsage = 64

// codeNames spells status codes the way the gRPC specification and the other clients do
// (codes.Code.String() gives "InvalidArgument").
var codeNames = map[codes.Code]string{
	codes.OK:                 "OK",
	codes.Canceled:           "CANCELLED",
	codes.Unknown:            "UNKNOWN",
	codes.InvalidArgument:    "INVALID_ARGUMENT",
	codes.DeadlineExceeded:   "DEADLINE_EXCEEDED",
	codes.NotFound:           "NOT_FOUND",
	codes.AlreadyExists:      "ALREADY_EXISTS",
	codes.PermissionDenied:   "PERMISSION_DENIED",
	codes.ResourceExhausted:  "RESOURCE_EXHAUSTED",
	codes.FailedPrecondition: "FAILED_PRECONDITION",
	codes.Aborted:            "ABORTED",
	codes.OutOfRange:         "OUT_OF_RANGE",
	codes.Unimplemented:      "UNIMPLEMENTED",
	codes.Internal:           "INTERNAL",
	codes.Unavailable:        "UNAVAILABLE",
	codes.DataLoss:           "DATA_LOSS",
	codes.Unauthenticated:    "UNAUTHENTICATED",
}

// repeated collects every occurrence of a flag.
type repeated []string

func (r *repeated) String() string     { return strings.Join(*r, ",") }
func (r *repeated) Set(v string) error { *r = append(*r, v); return nil }

type options struct {
	target, productName, productID, shippingID string
	inspectionID, previousID                   string
	references, pickups, questions             repeated
	stream                                     bool
	timeout                                    time.Duration
	tlsCA, tlsCert, tlsKey, token              string
}

func parseFlags(args []string) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("inspect-client", flag.ContinueOnError)
	fs.StringVar(&o.target, "target", "localhost:50051", "server address host:port")
	fs.StringVar(&o.tlsCA, "tls-ca", "", "PEM CA that signed the server certificate (turns TLS on)")
	fs.StringVar(&o.tlsCert, "tls-cert", "", "client certificate for mutual TLS (with -tls-key)")
	fs.StringVar(&o.tlsKey, "tls-key", "", "client private key for mutual TLS")
	fs.StringVar(&o.token, "token", os.Getenv("RPI_TOKEN"), "bearer API key or JWT (default $RPI_TOKEN)")
	fs.Var(&o.references, "reference", "vendor reference image: https URL or local file (repeatable)")
	fs.Var(&o.pickups, "pickup", "pickup image: https URL or local file (repeatable)")
	fs.StringVar(&o.productName, "product-name", "", "product name as listed by the vendor")
	fs.StringVar(&o.productID, "product-id", "", "vendor product id")
	fs.StringVar(&o.shippingID, "shipping-id", "", "shipment the pickup belongs to")
	fs.StringVar(&o.inspectionID, "inspection-id", "", "UUID; the server picks one when empty")
	fs.StringVar(&o.previousID, "previous-inspection-id", "", "inspection this one repeats")
	fs.Var(&o.questions, "question", `question "type|label|value_to_check|mandatory" (repeatable)`)
	fs.BoolVar(&o.stream, "stream", false, "use InspectStream and print progress events")
	fs.DurationVar(&o.timeout, "timeout", 120*time.Second, "deadline of the call")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		err := fmt.Errorf("unexpected arguments: %v", fs.Args())
		fmt.Fprintln(os.Stderr, err)
		return nil, err
	}
	return o, nil
}

// image turns a flag value into an Image: URLs are sent as-is (the server fetches them),
// anything else is read as a local file and sent inline.
func image(ref string) (*inspectionv1.Image, error) {
	if strings.HasPrefix(ref, "https://") || strings.HasPrefix(ref, "http://") {
		return &inspectionv1.Image{Source: &inspectionv1.Image_Uri{Uri: ref}}, nil
	}
	data, err := ioutil.ReadFile(ref)
	if err != nil {
		return nil, fmt.Errorf("cannot read image %q (not an http(s) URL, so read as a local file): %v",
			ref, err)
	}
	return &inspectionv1.Image{Source: &inspectionv1.Image_Content{Content: data}}, nil
}

func question(spec string) (*inspectionv1.Question, error) {
	parts := strings.Split(spec, "|")
	if len(parts) != 4 {
		return nil, fmt.Errorf("question %q: want type|label|value_to_check|mandatory", spec)
	}
	mandatory := strings.ToLower(strings.TrimSpace(parts[3]))
	return &inspectionv1.Question{
		Type:         parts[0],
		Label:        parts[1],
		ValueToCheck: parts[2],
		Mandatory:    mandatory == "yes" || mandatory == "true" || mandatory == "1",
	}, nil
}

func buildRequest(o *options) (*inspectionv1.InspectRequest, error) {
	req := &inspectionv1.InspectRequest{
		InspectionId:         o.inspectionID,
		PreviousInspectionId: o.previousID,
		ShippingId:           o.shippingID,
		ProductId:            o.productID,
		ProductName:          o.productName,
	}
	for _, ref := range o.references {
		img, err := image(ref)
		if err != nil {
			return nil, err
		}
		req.ReferenceImages = append(req.ReferenceImages, img)
	}
	for _, ref := range o.pickups {
		img, err := image(ref)
		if err != nil {
			return nil, err
		}
		req.PickupImages = append(req.PickupImages, img)
	}
	for _, spec := range o.questions {
		q, err := question(spec)
		if err != nil {
			return nil, err
		}
		req.Questions = append(req.Questions, q)
	}
	return req, nil
}

func printEvent(ev *inspectionv1.InspectStreamResponse) {
	switch e := ev.Event.(type) {
	case *inspectionv1.InspectStreamResponse_Accepted:
		fmt.Printf("event accepted: inspection_id=%s\n", e.Accepted.InspectionId)
	case *inspectionv1.InspectStreamResponse_ImagesFetched:
		fmt.Printf("event images_fetched: %d/%d\n", e.ImagesFetched.Fetched, e.ImagesFetched.Total)
	case *inspectionv1.InspectStreamResponse_PreprocessingDone:
		fmt.Printf("event preprocessing_done: tiles=%d prompt_tokens=%d\n",
			e.PreprocessingDone.Tiles, e.PreprocessingDone.PromptTokens)
	case *inspectionv1.InspectStreamResponse_Queued:
		fmt.Printf("event queued: position=%d\n", e.Queued.Position)
	case *inspectionv1.InspectStreamResponse_GenerationProgress:
		g := e.GenerationProgress
		fmt.Printf("event generation_progress: attempt=%d tokens=%d/%d\n",
			g.Attempt, g.TokensGenerated, g.MaxNewTokens)
	case *inspectionv1.InspectStreamResponse_AnswerReady:
		// The model's answer as generated; the final one (after the decision rules) comes
		// with the inspection and can differ.
		a := e.AnswerReady
		fmt.Printf("event answer_ready: model's raw answer attempt=%d label=%q result=%q "+
			"confidence=%d retake=%t\n", a.Attempt, a.Label, a.Result, a.Confidence, a.RetakeImage)
	case *inspectionv1.InspectStreamResponse_Inspection:
		fmt.Println("event inspection")
	default:
		// A newer server may send events this client does not know yet.
		fmt.Println("event unknown")
	}
}

func seconds(d *duration.Duration) float64 {
	if d == nil {
		return 0
	}
	v, err := ptypes.Duration(d)
	if err != nil {
		return 0
	}
	return v.Seconds()
}

func printInspection(in *inspectionv1.Inspection) {
	fmt.Printf("inspection_id: %s\n", in.InspectionId)
	fmt.Printf("shipping_id: %s\n", in.ShippingId)
	fmt.Printf("decision: %s\n", strings.TrimPrefix(in.Decision.String(), "DECISION_"))
	fmt.Printf("model_recommendation: %s\n",
		strings.TrimPrefix(in.ModelRecommendation.String(), "RECOMMENDATION_"))
	fmt.Printf("match_score: %.1f\n", in.MatchScore)
	fmt.Printf("attempts: %d\n", in.Attempts)
	if m := in.Model; m != nil {
		fmt.Printf("model: %s (revision %q, untrained=%t)\n", m.Name, m.Revision, m.Untrained)
		if m.Untrained {
			fmt.Fprintln(os.Stderr, "WARNING: the server runs an untrained demo model: "+
				"its answers and decision carry no meaning")
		}
	}
	if t := in.Timings; t != nil {
		fmt.Printf("timings: fetch=%.3fs preprocess=%.3fs queue=%.3fs generate=%.3fs total=%.3fs\n",
			seconds(t.Fetch), seconds(t.Preprocess), seconds(t.Queue), seconds(t.Generate),
			seconds(t.Total))
	}
	if len(in.Answers) > 0 {
		fmt.Println("final answers, after the decision rules:")
	}
	for _, a := range in.Answers {
		mandatory := "optional"
		if a.Mandatory {
			mandatory = "mandatory"
		}
		fmt.Printf("answer: %q = %q (expected %q, %s, confidence %d%%, source %s, retake=%t)\n",
			a.Label, a.Answer, a.ValueToCheck, mandatory, a.Confidence,
			strings.TrimPrefix(a.Source.String(), "ANSWER_SOURCE_"), a.RetakeImage)
		if a.Evidence != "" {
			fmt.Printf("  evidence: %s\n", a.Evidence)
		}
	}
}

// fail prints the status with its google.rpc details and returns the exit status.
func fail(err error, o *options) int {
	st, ok := status.FromError(err)
	if !ok {
		fmt.Fprintf(os.Stderr, "rpc failed: %v\n", err)
		return int(codes.Unknown)
	}
	name, known := codeNames[st.Code()]
	if !known {
		name = st.Code().String()
	}
	fmt.Fprintf(os.Stderr, "rpc failed: %s: %s\n", name, st.Message())
	explained := false
	for _, d := range st.Details() {
		switch info := d.(type) {
		case *errdetails.ErrorInfo:
			explained = true
			fmt.Fprintf(os.Stderr, "  reason: %s (domain %s)\n", info.Reason, info.Domain)
			keys := make([]string, 0, len(info.Metadata))
			for k := range info.Metadata {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				fmt.Fprintf(os.Stderr, "  metadata %s=%s\n", k, info.Metadata[k])
			}
		case *errdetails.BadRequest:
			for _, v := range info.FieldViolations {
				fmt.Fprintf(os.Stderr, "  field %s: %s\n", v.Field, v.Description)
			}
		case *errdetails.RetryInfo:
			fmt.Fprintf(os.Stderr, "  retry after: %.1fs\n", seconds(info.RetryDelay))
		}
	}
	// No ErrorInfo: grpc itself ended the call before any server code answered.
	if !explained && st.Code() == codes.Unavailable {
		fmt.Fprintf(os.Stderr, "cannot reach %s: check the address, that the service is running, "+
			"and -tls-ca if it serves TLS\n", o.target)
	}
	if !explained && st.Code() == codes.DeadlineExceeded {
		fmt.Fprintf(os.Stderr, "no answer from %s within -timeout %v\n", o.target, o.timeout)
	}
	if st.Code() == codes.OK {
		return int(codes.Unknown)
	}
	return int(st.Code())
}

// transportSecurity is TLS when -tls-ca is given (mutual TLS with -tls-cert/-tls-key), else
// plaintext for the local set-up.
func transportSecurity(o *options) (grpc.DialOption, error) {
	if o.tlsCA == "" {
		if o.tlsCert != "" || o.tlsKey != "" {
			return nil, fmt.Errorf("-tls-cert/-tls-key need -tls-ca")
		}
		return grpc.WithInsecure(), nil
	}
	pem, err := ioutil.ReadFile(o.tlsCA)
	if err != nil {
		return nil, fmt.Errorf("read -tls-ca: %v", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("-tls-ca %s holds no PEM certificate", o.tlsCA)
	}
	config := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	if o.tlsCert != "" || o.tlsKey != "" {
		pair, err := tls.LoadX509KeyPair(o.tlsCert, o.tlsKey)
		if err != nil {
			return nil, fmt.Errorf("load -tls-cert/-tls-key: %v", err)
		}
		config.Certificates = []tls.Certificate{pair}
	}
	return grpc.WithTransportCredentials(credentials.NewTLS(config)), nil
}

func run(o *options) int {
	req, err := buildRequest(o)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return exitUsage
	}
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	if o.token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+o.token)
	}
	security, err := transportSecurity(o)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return exitUsage
	}
	conn, err := grpc.DialContext(ctx, o.target, security)
	if err != nil {
		fmt.Fprintf(os.Stderr, "connect %s: %v\n", o.target, err)
		return int(codes.Unavailable)
	}
	defer conn.Close()
	client := inspectionv1.NewInspectionServiceClient(conn)

	if !o.stream {
		resp, err := client.Inspect(ctx, req)
		if err != nil {
			return fail(err, o)
		}
		printInspection(resp.Inspection)
		return 0
	}
	stream, err := client.InspectStream(ctx, req)
	if err != nil {
		return fail(err, o)
	}
	var final *inspectionv1.Inspection
	for {
		ev, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fail(err, o)
		}
		printEvent(ev)
		if in := ev.GetInspection(); in != nil {
			final = in
		}
	}
	if final == nil {
		fmt.Fprintln(os.Stderr, "rpc failed: stream ended without an inspection")
		return int(codes.Unknown)
	}
	printInspection(final)
	return 0
}

func main() {
	o, err := parseFlags(os.Args[1:])
	if err == flag.ErrHelp {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "inspect-client: run with -h for the flags")
		os.Exit(exitUsage)
	}
	os.Exit(run(o))
}
