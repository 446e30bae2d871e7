// Package deploy holds the docker-compose stack, the Dockerfile, the NATS
// server config and the production notes. It has no code: its tests load
// those files and check them against the services' real config keys,
// binaries and bus subjects, so they cannot drift from the code unnoticed.
package deploy
