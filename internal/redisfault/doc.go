// Package redisfault makes Redis misbehave on purpose, for tests of what
// courier promises when it does.
//
// A [Hook] is a go-redis hook that fails chosen commands: the Nth command
// matching a [Match], before it reaches Redis (the command did not run) or
// after (it ran, its answer was lost). A [Proxy] is a loopback TCP proxy in
// front of a real redis-server that can cut every connection and refuse new
// ones for a while, stall traffic, or reset connections.
package redisfault
