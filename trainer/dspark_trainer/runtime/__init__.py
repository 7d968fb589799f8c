"""The distributed trainer runtime (torchrun entry point of `dspark train --config FILE`).

Modules, one job each; the package itself imports nothing heavy:
- ``lr_schedule``: the pure learning-rate schedule (linear warm-up, cosine decay to a minimum).
- ``dist``: process-group set-up (gloo on CPU, NCCL on GPU) and small collective helpers.
- ``fsdp``: FSDP2 wrapping (``fully_shard`` per decoder layer + root) and the optimizer.
- ``checkpoint``: torch.distributed.checkpoint save/resume with atomic completion, keep-last-K.
- ``metrics``: the Prometheus registry of trainer and eval metrics.
- ``progress``: the JSON progress document (served at /progress and sent to the job's status).
- ``http_server``: /metrics, /progress and /healthz on rank 0.
- ``signals``: SIGTERM/SIGINT -> a stop request that all ranks agree on.
- ``completion``: the completion marker in the output directory.
- ``preflight``: start-up checks that name the offending config field.
- ``sources``: where a rank's hidden states come from (capture servers, or inline).
- ``step``: one optimizer step (micro-batches, global denominator, clipping).
- ``evaluate``: the periodic evaluation on the held-out split.
- ``trainer``: the run: resume, loop, checkpoints, eval, export, completion.
"""
