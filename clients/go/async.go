package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/golang/protobuf/ptypes"
	"google.golang.org/genproto/googleapis/longrunning"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	inspectionv1 "github.com/rpi-platform/rpi/gen/go/rpi/inspection/v1"
)

// runAsync submits the inspection (AsyncInspectionService.SubmitInspection), prints the
// operation's name, polls google.longrunning.Operations/GetOperation once a second until the
// operation is done, and prints the inspection like a synchronous call
// (docs/operations-async.md). A failed or cancelled operation exits with its status code.
func runAsync(ctx context.Context, conn *grpc.ClientConn, req *inspectionv1.InspectRequest, o *options) int {
	submitted, err := inspectionv1.NewAsyncInspectionServiceClient(conn).SubmitInspection(
		ctx, &inspectionv1.SubmitInspectionRequest{Inspection: req, RequestId: o.requestID})
	if err != nil {
		return fail(err, o)
	}
	fmt.Printf("operation: %s\n", submitted.GetName())
	ops := longrunning.NewOperationsClient(conn)
	last := inspectionv1.OperationState_OPERATION_STATE_UNSPECIFIED
	for {
		op, err := ops.GetOperation(ctx, &longrunning.GetOperationRequest{Name: submitted.GetName()})
		if err != nil {
			return fail(err, o)
		}
		meta := &inspectionv1.InspectionOperationMetadata{}
		if err := ptypes.UnmarshalAny(op.GetMetadata(), meta); err != nil {
			fmt.Fprintf(os.Stderr, "rpc failed: unexpected metadata: %v\n", err)
			return int(codes.Internal)
		}
		if meta.GetState() != last {
			last = meta.GetState()
			fmt.Printf("state: %s\n", last)
		}
		if op.GetDone() {
			if e := op.GetError(); e != nil {
				fmt.Fprintf(os.Stderr, "operation failed: %s: %s\n", codeNames[codes.Code(e.GetCode())], e.GetMessage())
				return int(e.GetCode())
			}
			inspection := &inspectionv1.Inspection{}
			if err := ptypes.UnmarshalAny(op.GetResponse(), inspection); err != nil {
				fmt.Fprintf(os.Stderr, "rpc failed: unexpected response: %v\n", err)
				return int(codes.Internal)
			}
			printInspection(inspection)
			return 0
		}
		select {
		case <-ctx.Done():
			fmt.Fprintln(os.Stderr, "rpc failed: DEADLINE_EXCEEDED: the operation did not finish in time")
			return int(codes.DeadlineExceeded)
		case <-time.After(time.Second):
		}
	}
}
