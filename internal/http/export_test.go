package httpapi

import (
	"bufio"
	"strings"

	"github.com/valyala/fasthttp"
)

// TakesNatively runs the native publish on the raw request, as Server would, and reports
// whether it took the request, and its answer's status if it did (a request fasthttp
// cannot read reaches no handler: false).
func TakesNatively(h *Handler, raw string) (bool, int) {
	var req fasthttp.Request
	if err := req.Read(bufio.NewReader(strings.NewReader(raw))); err != nil {
		return false, 0
	}
	var ctx fasthttp.RequestCtx
	ctx.Init(&req, nil, nil)
	took := h.api.servePublish(&ctx)
	return took, ctx.Response.StatusCode()
}
