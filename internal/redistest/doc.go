// Package redistest starts real redis-server processes for tests.
//
// Each Server listens on its own free 127.0.0.1 port with its own temporary
// working directory, and is stopped when the test that started it ends. The
// binary is taken from $REDIS_SERVER, or from PATH; run scripts/ensure-redis.sh
// to install it.
package redistest
