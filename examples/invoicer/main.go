// Command invoicer is a weft function in Go, standard library only: it
// receives com.example.order.validated as a binary-mode CloudEvent on $PORT
// and "issues an invoice" by printing it. Orders above MAX_AMOUNT fail with
// 500, which weft retries and finally dead-letters.
package main

import (
	"encoding/json"
	"fmt"
	"log"
	"net/http"
	"os"
	"strconv"
)

func main() {
	limit, err := strconv.ParseFloat(os.Getenv("MAX_AMOUNT"), 64)
	if err != nil {
		limit = 1000
	}
	http.HandleFunc("POST /", func(w http.ResponseWriter, r *http.Request) {
		var order struct {
			ID     any     `json:"id"`
			Amount float64 `json:"amount"`
		}
		if err := json.NewDecoder(r.Body).Decode(&order); err != nil {
			http.Error(w, "not an order: "+err.Error(), http.StatusBadRequest)
			return
		}
		if order.Amount > limit {
			msg := fmt.Sprintf("amount %.2f exceeds the limit %.2f", order.Amount, limit)
			fmt.Fprintf(os.Stderr, "refusing order %v: %s\n", order.ID, msg)
			http.Error(w, msg, http.StatusInternalServerError)
			return
		}
		fmt.Printf("invoice issued for order %v (event %s): %.2f\n", order.ID, r.Header.Get("ce-id"), order.Amount)
		w.WriteHeader(http.StatusAccepted)
	})
	addr := "127.0.0.1:" + os.Getenv("PORT")
	log.Printf("invoicer listening on %s (limit %.2f)", addr, limit)
	log.Fatal(http.ListenAndServe(addr, nil))
}
