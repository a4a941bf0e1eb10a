-- Idempotent delivery of events and inputs: a caller that may retry (the Kubernetes operator
-- delivering spec.events / spec.inputs) names each delivery, and a repeated name is a no-op.
CREATE TABLE deliveries (
    run_id       uuid NOT NULL REFERENCES executions (id) ON DELETE CASCADE,
    delivery_id  text NOT NULL,
    outcome      text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, delivery_id)
);
