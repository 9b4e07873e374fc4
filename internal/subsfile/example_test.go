package subsfile_test

import (
	"fmt"
	"time"

	"github.com/bridge-dev/bridge/internal/subsfile"
)

func ExampleParse() {
	entries, err := subsfile.Parse([]byte(`
subscriptions:
  - name: orders-to-billing
    subject: orders
    url: https://billing.example.com/hooks/orders
    retry: {min_backoff: 2s, max_backoff: 5m}
    timeout: 10s
`))
	fmt.Println(len(entries), entries[0].Name, time.Duration(*entries[0].Input.Timeout), err)

	_, err = subsfile.Parse([]byte(`
subscriptions:
  - name: orders-to-billing
    subject: orders
    url: https://billing.example.com/hooks/orders
    retry: {min_backoff: 2s, max_backoff: soon}
`))
	fmt.Println(err)
	// Output:
	// 1 orders-to-billing 10s <nil>
	// subscriptions[0] (name "orders-to-billing", line 3): field "retry.max_backoff": invalid duration "soon": use a Go duration such as "30s" or whole seconds
}
