// Command client calls ollama-grpc-gateway the way a Go service does: stubs
// generated from proto/ by protoc-gen-go and protoc-gen-go-grpc, plain grpc-go.
//
// It streams a completion, runs a chat turn with a tool call and its result,
// embeds two texts, reads ErrorInfo and RetryInfo from failed calls, shows a
// deadline, sends credentials when OGW_API_KEY is set, and checks health.
// Every step checks what it got and the program exits 1 at the first surprise,
// so CI (scripts/run-examples.sh) can run it against the gateway.
//
// Build: examples/go/build.sh (see examples/README.md and docs/clients.md).
// Environment: OGW_ADDR (default localhost:50051), OGW_API_KEY, OGW_MODEL,
// OGW_EMBED_MODEL, OGW_BUSY_MODEL, OGW_SLOW_MODEL (examples/README.md).
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	// The canonical import path, from the go_package option of our protos.
	gatewayv1 "ollama-grpc-gateway/gen/go/ollama/gateway/v1"
)

// callTimeout bounds every call that is expected to succeed. Always set a
// deadline: without one the gateway applies its MAX_DEADLINE_MS (30 min).
const callTimeout = 30 * time.Second

func main() {
	addr := env("OGW_ADDR", "localhost:50051")
	model := env("OGW_MODEL", "llama3.2")

	opts := []grpc.DialOption{
		// Plaintext HTTP/2 (h2c) as the gateway serves it; in a mesh the
		// sidecars add mTLS. With TLS use grpc.WithTransportCredentials.
		grpc.WithInsecure(),
		grpc.WithBlock(),
	}
	if key := os.Getenv("OGW_API_KEY"); key != "" {
		// Credentials go with every call as `authorization: Bearer <key>`.
		opts = append(opts, grpc.WithPerRPCCredentials(bearer(key)))
	}
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	conn, err := grpc.DialContext(ctx, addr, opts...)
	cancel()
	check(err == nil, "connect to %s: %v", addr, err)
	defer conn.Close()

	inference := gatewayv1.NewInferenceServiceClient(conn)
	health(conn)
	listModels(gatewayv1.NewModelServiceClient(conn), model)
	generate(inference, model)
	chatWithTool(inference, model)
	embed(inference, env("OGW_EMBED_MODEL", "all-minilm"))
	unknownModel(inference)
	if busy := os.Getenv("OGW_BUSY_MODEL"); busy != "" {
		busyModel(inference, busy)
	}
	deadline(inference, env("OGW_SLOW_MODEL", model))
	fmt.Println("go example: all checks passed")
}

// health asks grpc.health.v1 about the whole server (service "").
func health(conn *grpc.ClientConn) {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	res, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: ""})
	check(err == nil, "health: %v", err)
	check(res.Status == healthpb.HealthCheckResponse_SERVING, "health: %v", res.Status)
	ok("health", "%v", res.Status)
}

// listModels lists the models installed on the fleet, merged over nodes.
func listModels(models gatewayv1.ModelServiceClient, model string) {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	res, err := models.ListModels(ctx, &gatewayv1.ListModelsRequest{})
	check(err == nil, "list models: %v", err)
	names := []string{}
	for _, m := range res.Models {
		names = append(names, m.Name)
	}
	check(contains(names, model+":latest") || contains(names, model), "list models: %s not in %v", model, names)
	ok("list models", "%s", strings.Join(names, ", "))
}

// generate streams a completion and prints it as it arrives.
func generate(inference gatewayv1.InferenceServiceClient, model string) {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	numPredict := int32(8)
	stream, err := inference.Generate(ctx, &gatewayv1.GenerateRequest{
		Model:   model,
		Prompt:  "Why is the sky blue?",
		Options: &gatewayv1.Options{NumPredict: &numPredict},
	})
	// Errors of a server stream (unknown model, overload...) arrive at the
	// first Recv, not here: here only the request was sent.
	check(err == nil, "generate: %v", err)
	var text strings.Builder
	var last *gatewayv1.GenerateResponse
	for {
		msg, err := stream.Recv()
		if err == io.EOF {
			break // status OK: the stream is complete
		}
		check(err == nil, "generate: %v", err)
		text.WriteString(msg.Text)
		last = msg
	}
	// A stream always ends with one done message, or with an error.
	check(last != nil && last.Done, "generate: no final message")
	check(text.Len() > 0, "generate: no text")
	ok("generate", "%q (%v, %d tokens, node %s)", text.String(), last.DoneReason,
		last.Usage.GetCompletionTokens(), last.Usage.GetNode())
}

// chatWithTool offers the model a tool, runs the call it asks for, and sends
// the result back for the final answer.
func chatWithTool(inference gatewayv1.InferenceServiceClient, model string) {
	params, err := structpb.NewStruct(map[string]interface{}{
		"type": "object",
		"properties": map[string]interface{}{
			"city": map[string]interface{}{"type": "string", "description": "City name"},
		},
		"required": []interface{}{"city"},
	})
	check(err == nil, "chat: %v", err)
	tools := []*gatewayv1.Tool{{Name: "get_weather", Description: "Current weather in a city", Parameters: params}}
	messages := []*gatewayv1.Message{{
		Role:    gatewayv1.Role_ROLE_USER,
		Content: "Use get_weather to tell me the weather in Paris",
	}}

	// Turn 1: the model answers with a tool call instead of text.
	reply := chat(inference, &gatewayv1.ChatRequest{Model: model, Messages: messages, Tools: tools})
	check(len(reply.ToolCalls) == 1, "chat: expected one tool call, got %v", reply.ToolCalls)
	call := reply.ToolCalls[0]
	city := call.Arguments.GetFields()["city"].GetStringValue()
	check(call.Name == "get_weather" && city != "", "chat: unexpected tool call %v", call)
	ok("chat tool call", "%s(city=%q) id=%s", call.Name, city, call.Id)

	// Turn 2: our "tool" runs, and its result goes back with the call's id.
	result := fmt.Sprintf(`{"city":%q,"temperature_c":18,"sky":"clear"}`, city)
	messages = append(messages, reply, &gatewayv1.Message{
		Role:       gatewayv1.Role_ROLE_TOOL,
		Content:    result,
		ToolName:   call.Name,
		ToolCallId: call.Id,
	})
	answer := chat(inference, &gatewayv1.ChatRequest{Model: model, Messages: messages, Tools: tools})
	check(answer.Content != "" && len(answer.ToolCalls) == 0, "chat: no text answer after the tool result")
	ok("chat tool result", "%q", answer.Content)
}

// chat runs one streamed chat turn and folds the deltas into one message.
func chat(inference gatewayv1.InferenceServiceClient, req *gatewayv1.ChatRequest) *gatewayv1.Message {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	stream, err := inference.Chat(ctx, req)
	check(err == nil, "chat: %v", err)
	reply := &gatewayv1.Message{Role: gatewayv1.Role_ROLE_ASSISTANT}
	done := false
	for {
		msg, err := stream.Recv()
		if err == io.EOF {
			break
		}
		check(err == nil, "chat: %v", err)
		reply.Content += msg.Message.GetContent()
		reply.Thinking += msg.Message.GetThinking()
		reply.ToolCalls = append(reply.ToolCalls, msg.Message.GetToolCalls()...)
		done = msg.Done
	}
	check(done, "chat: no final message")
	return reply
}

// embed turns two texts into vectors with one unary call.
func embed(inference gatewayv1.InferenceServiceClient, model string) {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	res, err := inference.Embed(ctx, &gatewayv1.EmbedRequest{Model: model, Inputs: []string{"hello world", "hello there"}})
	check(err == nil, "embed: %v", err)
	check(len(res.Embeddings) == 2, "embed: %d vectors for 2 inputs", len(res.Embeddings))
	dims := len(res.Embeddings[0].Values)
	check(dims > 0 && len(res.Embeddings[1].Values) == dims, "embed: vector sizes %d and %d", dims, len(res.Embeddings[1].Values))
	ok("embed", "2 vectors of %d dimensions (%d from the cache)", dims, res.CachedInputs)
}

// unknownModel shows a failed call: a status code plus ErrorInfo, whose
// stable reason is what code should switch on (not the message).
func unknownModel(inference gatewayv1.InferenceServiceClient) {
	err := drainGenerate(inference, &gatewayv1.GenerateRequest{Model: "no-such-model", Prompt: "hi"}, callTimeout)
	st := status.Convert(err)
	info, _ := details(st)
	check(st.Code() == codes.NotFound, "unknown model: got %v", err)
	check(info != nil && info.Reason == "MODEL_NOT_FOUND" && info.Domain == "ollama.gateway.v1",
		"unknown model: ErrorInfo %v", info)
	ok("error", "%v %s (domain %s, model %s)", st.Code(), info.Reason, info.Domain, info.Metadata["model"])
}

// busyModel shows an error worth retrying: UNAVAILABLE or RESOURCE_EXHAUSTED
// with a RetryInfo saying how long to wait first.
func busyModel(inference gatewayv1.InferenceServiceClient, model string) {
	err := drainGenerate(inference, &gatewayv1.GenerateRequest{Model: model, Prompt: "hi"}, callTimeout)
	st := status.Convert(err)
	info, retry := details(st)
	check(st.Code() == codes.Unavailable || st.Code() == codes.ResourceExhausted, "busy model: got %v", err)
	check(info != nil && retry != nil && retry.RetryDelay.AsDuration() > 0,
		"busy model: ErrorInfo %v, RetryInfo %v", info, retry)
	// A real client would now sleep retry.RetryDelay (plus jitter) and try again.
	ok("retryable error", "%v %s, retry after %v", st.Code(), info.Reason, retry.RetryDelay.AsDuration())
}

// deadline gives a call less time than it needs: the gateway stops the
// upstream work and the call ends with DEADLINE_EXCEEDED.
func deadline(inference gatewayv1.InferenceServiceClient, model string) {
	numPredict := int32(100000)
	start := time.Now()
	err := drainGenerate(inference, &gatewayv1.GenerateRequest{
		Model:   model,
		Prompt:  "Write a very long story.",
		Options: &gatewayv1.Options{NumPredict: &numPredict},
	}, 500*time.Millisecond)
	check(status.Code(err) == codes.DeadlineExceeded, "deadline: got %v", err)
	ok("deadline", "%v after %v", status.Code(err), time.Since(start).Round(10*time.Millisecond))
}

// drainGenerate runs a Generate call to its end and returns its error.
func drainGenerate(inference gatewayv1.InferenceServiceClient, req *gatewayv1.GenerateRequest, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	stream, err := inference.Generate(ctx, req)
	if err != nil {
		return err
	}
	for {
		if _, err := stream.Recv(); err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
	}
}

// details picks ErrorInfo and RetryInfo out of a status's details
// (grpc-status-details-bin).
func details(st *status.Status) (*errdetails.ErrorInfo, *errdetails.RetryInfo) {
	var info *errdetails.ErrorInfo
	var retry *errdetails.RetryInfo
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.ErrorInfo:
			info = d
		case *errdetails.RetryInfo:
			retry = d
		}
	}
	return info, retry
}

// bearer sends an API key with every call.
type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

// RequireTransportSecurity is false so the example works over plaintext
// against a local gateway; return true in production, with TLS.
func (bearer) RequireTransportSecurity() bool { return false }

func env(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func ok(step, format string, args ...interface{}) {
	fmt.Printf("ok %-17s %s\n", step+":", fmt.Sprintf(format, args...))
}

func check(cond bool, format string, args ...interface{}) {
	if !cond {
		fmt.Fprintf(os.Stderr, "go example: FAILED: "+format+"\n", args...)
		os.Exit(1)
	}
}
