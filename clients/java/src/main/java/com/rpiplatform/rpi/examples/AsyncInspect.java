package com.rpiplatform.rpi.examples;

import com.google.longrunning.GetOperationRequest;
import com.google.longrunning.Operation;
import com.google.longrunning.OperationsGrpc;
import com.google.protobuf.InvalidProtocolBufferException;
import com.rpiplatform.rpi.inspection.v1.AsyncInspectionServiceGrpc;
import com.rpiplatform.rpi.inspection.v1.Callback;
import com.rpiplatform.rpi.inspection.v1.InspectRequest;
import com.rpiplatform.rpi.inspection.v1.Inspection;
import com.rpiplatform.rpi.inspection.v1.InspectionOperationMetadata;
import com.rpiplatform.rpi.inspection.v1.OperationState;
import com.rpiplatform.rpi.inspection.v1.SubmitInspectionRequest;
import io.grpc.ClientInterceptor;
import io.grpc.Deadline;
import io.grpc.ManagedChannel;
import io.grpc.Status;
import java.util.concurrent.TimeUnit;

/**
 * The -async mode, as the Go example's async.go: SubmitInspection, print the operation's name,
 * poll google.longrunning.Operations/GetOperation once a second (printing each new state) until
 * the operation is done or -timeout has passed since the submit, then print the inspection like
 * a synchronous call (docs/operations-async.md). A failed or cancelled operation prints its
 * status and google.rpc details and exits with its code.
 */
final class AsyncInspect {
  private static final long POLL_MILLIS = 1_000;

  private AsyncInspect() {}

  /** Throws StatusRuntimeException when a call fails; the caller prints it like any other. */
  static int run(ManagedChannel channel, ClientInterceptor[] interceptors, InspectRequest request,
      String requestId, String callbackUrl, long timeoutMillis) throws InterruptedException {
    // One deadline for the whole wait: the submit and every poll share it.
    Deadline deadline = Deadline.after(timeoutMillis, TimeUnit.MILLISECONDS);
    SubmitInspectionRequest.Builder submit =
        SubmitInspectionRequest.newBuilder().setInspection(request).setRequestId(requestId);
    if (!callbackUrl.isEmpty()) {
      submit.setCallback(Callback.newBuilder().setUrl(callbackUrl));
    }
    Operation submitted = AsyncInspectionServiceGrpc.newBlockingStub(channel)
        .withInterceptors(interceptors).withDeadline(deadline).submitInspection(submit.build());
    System.out.println("operation: " + submitted.getName());
    OperationsGrpc.OperationsBlockingStub operations =
        OperationsGrpc.newBlockingStub(channel).withInterceptors(interceptors);
    OperationState last = OperationState.OPERATION_STATE_UNSPECIFIED;
    while (true) {
      Operation op = operations.withDeadline(deadline).getOperation(
          GetOperationRequest.newBuilder().setName(submitted.getName()).build());
      InspectionOperationMetadata meta;
      try {
        meta = op.getMetadata().unpack(InspectionOperationMetadata.class);
      } catch (InvalidProtocolBufferException e) {
        System.err.println("rpc failed: unexpected metadata: " + e.getMessage());
        return Status.Code.INTERNAL.value();
      }
      if (meta.getState() != last) {
        last = meta.getState();
        System.out.println("state: " + last.name());
      }
      if (op.getDone()) {
        return finished(op);
      }
      long left = deadline.timeRemaining(TimeUnit.MILLISECONDS);
      if (left <= 0) {
        System.err.println(
            "rpc failed: DEADLINE_EXCEEDED: the operation did not finish in time");
        System.err.println("  operation " + submitted.getName() + " goes on: poll it again later");
        return Status.Code.DEADLINE_EXCEEDED.value();
      }
      Thread.sleep(Math.min(POLL_MILLIS, left));
    }
  }

  private static int finished(Operation op) {
    if (op.hasError()) {
      com.google.rpc.Status error = op.getError();
      Status.Code code = Status.fromCodeValue(error.getCode()).getCode();
      System.err.println("operation failed: " + code.name() + ": " + error.getMessage());
      try {
        InspectClient.printDetails(error.toByteArray());
      } catch (InvalidProtocolBufferException ignored) {
        // The code and message above are what matters; details are a courtesy.
      }
      return code == Status.Code.OK ? Status.Code.UNKNOWN.value() : code.value();
    }
    Inspection inspection;
    try {
      inspection = op.getResponse().unpack(Inspection.class);
    } catch (InvalidProtocolBufferException e) {
      System.err.println("rpc failed: unexpected response: " + e.getMessage());
      return Status.Code.INTERNAL.value();
    }
    InspectClient.printInspection(inspection);
    return 0;
  }
}
