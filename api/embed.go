// Package api holds the OpenAPI 3.0 description of the bridge's HTTP API.
//
// The document is embedded so that the server can answer GET /openapi.yaml with
// exactly the contract it implements, and so tests can compare it with the router.
package api

import _ "embed"

// OpenAPI is the bridge's OpenAPI 3.0.3 document (api/openapi.yaml), as YAML bytes.
//
//go:embed openapi.yaml
var OpenAPI []byte
