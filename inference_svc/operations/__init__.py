"""Asynchronous inspections (docs/operations-async.md): the job queue's client and the worker
that runs queued jobs on this replica. The gRPC servicers are in inference_svc.grpc_api."""
