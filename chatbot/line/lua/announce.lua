-- Every listening waiting request hears its position, the queue channel the depth.
-- include: helpers
-- KEYS: waiting
-- ARGV: queue_channel, position_fmt, depth_fmt
lib.announce(waiting, queue_channel, position_fmt, depth_fmt)
