"""What the tests share, in one place; nothing here is a test, and no test imports another
(``tests/unit/test_test_helpers.py``).

* ``fakes`` — hand-written in-memory fakes of our own seams (document store, source blob, the
  status container's JSON documents);
* ``pipeline`` — a scripted analyzer, a recording observer and ``make_deps`` for the pipeline;
* ``vision`` — a canned analyze body, and the Vision emulator's key, route and fast analyzer;
* ``status_answers`` — the status report's canned query answers and a fake runner over them;
* ``tuning_review`` — the tuning review's query rows, runner, document store and context;
* ``polling`` — the one poll-with-deadline loop every wait uses; ``clocks`` — fake clocks
  (monotonic, wall, and a timer driver's) whose time moves only when someone sleeps;
* ``images`` — generated good and bad test images; ``sdk_sample`` — the SDK's sample image and
  the results its documentation shows;
* ``stack`` — a private local stack for the pipeline acceptance tests and the probes they read;
* ``telemetry_gen`` — telemetry shaped like the app's (posted to a private Monitor emulator, or
  mapped straight into its store's rows);
* ``status_schema`` — ``docs/status.schema.json`` and its validator;
* ``status_load``, ``tuning`` — what the two files of each of those stack suites share;
* ``fidelity`` — the shared stack and sample runner of the fidelity suite.
"""
