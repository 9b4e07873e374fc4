// Package redistest starts real redis-server processes for tests.
//
// Each Server listens on its own free 127.0.0.1 port with its own temporary
// working directory, and is stopped when the test that started it ends. The
// binary is taken from $REDIS_SERVER, or from PATH; run scripts/ensure-redis.sh
// to install it.
//
// Beyond a single server (Start, optionally TLS-only with client
// certificates), StartCluster starts a Redis Cluster of masters and
// StartSentinel a master, a replica and a sentinel watching them.
package redistest
