"""What the tests share, in one place; nothing here is a test.

* ``fakes`` — hand-written in-memory fakes of our own seams (document store, source blob);
* ``polling`` — the one poll-with-deadline loop every wait uses; ``clocks`` — a fake clock whose
  time moves only when someone sleeps;
* ``images`` — generated good and bad test images; ``sdk_sample`` — the SDK's sample image and
  the results its documentation shows;
* ``stack`` — a private local stack for the pipeline acceptance tests and the probes they read;
* ``telemetry_gen`` — telemetry shaped like the app's, and a private Monitor emulator;
* ``status_schema`` — ``docs/status.schema.json`` and its validator;
* ``status_load``, ``tuning`` — what the two files of each of those stack suites share;
* ``fidelity`` — the shared stack and sample runner of the fidelity suite.
"""
