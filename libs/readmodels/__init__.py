"""The gateway's read models: MongoDB collections folded from the request events.

The gateway writes them as it takes jobs and follows the request-event topic;
`darkroom rebuild` (libs/cli/rebuild.py) drops them and replays the topic through the
same code, so both produce the same documents. Each module owns its collections'
names and document format:

- `view`: `JobView`, what the read side shows of a job, and `project`, its fold;
- `jobs`: `gateway_jobs`, a revision of each job each time its view changes
  (`JobProjection`), each a `JobView`;
- `catalog`: `gateway_images` and `gateway_image_hashes`, the finished images;
- `idempotency`: `gateway_idempotency`, the claims of `Idempotency-Key`s.
"""
