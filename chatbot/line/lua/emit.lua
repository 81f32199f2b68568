-- A streamed chunk: appended to the request's stream after the ones before it, its waiting
-- web process's doorbell rung (unless the request is quiet), and published to its SSE channel.
-- include: helpers
-- KEYS: info, stream
-- ARGV: request_id, event, ttl, channel, notice
lib.append(info, stream, request_id, event, ttl, false)
redis.call('PUBLISH', channel, notice)
