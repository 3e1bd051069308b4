package echo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// StreamMethod is the full name of the bidirectional streaming echo.
const StreamMethod = "/rampart.test.Echo/Stream"

// WhoMethod is the full name of the unary call that answers who served it
// and who called (a JSON Who).
const WhoMethod = "/rampart.test.Echo/Who"

// Who is WhoMethod's answer.
type Who struct {
	Name string `json:"name"`
	// XFCC is the x-forwarded-client-cert the sidecar in front set: the
	// caller's SPIFFE ID as its mTLS handshake proved it.
	XFCC string `json:"xfcc"`
}

// StreamDesc describes the echo stream for grpc.ClientConn.NewStream.
var StreamDesc = grpc.StreamDesc{StreamName: "Stream", ServerStreams: true, ClientStreams: true}

// serviceDesc is written by hand (no protoc): messages are raw bytes (Codec).
var serviceDesc = grpc.ServiceDesc{
	ServiceName: "rampart.test.Echo",
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Who",
		Handler: func(srv any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			var in []byte
			if err := dec(&in); err != nil {
				return nil, err
			}
			return srv.(*Server).who(ctx)
		},
	}},
	Streams: []grpc.StreamDesc{{
		StreamName: StreamDesc.StreamName, ServerStreams: true, ClientStreams: true,
		Handler: func(srv any, stream grpc.ServerStream) error { return srv.(*Server).stream(stream) },
	}},
}

func (s *Server) who(ctx context.Context) (*[]byte, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	w := Who{Name: s.cfg.Name}
	if v := md.Get("x-forwarded-client-cert"); len(v) > 0 {
		w.XFCC = v[0]
	}
	if err := grpc.SetHeader(ctx, metadata.Pairs("x-echo-name", s.cfg.Name)); err != nil {
		return nil, err
	}
	b, err := json.Marshal(w)
	return &b, err
}

// stream sends every message back as it arrives, with the server's name in
// the x-echo-name header.
func (s *Server) stream(stream grpc.ServerStream) error {
	if err := stream.SendHeader(metadata.Pairs("x-echo-name", s.cfg.Name)); err != nil {
		return err
	}
	for {
		var msg []byte
		if err := stream.RecvMsg(&msg); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if err := stream.SendMsg(&msg); err != nil {
			return err
		}
	}
}

// Codec passes messages as they are: a *[]byte each way.
type Codec struct{}

// Marshal returns the bytes v points at.
func (Codec) Marshal(v any) ([]byte, error) {
	b, ok := v.(*[]byte)
	if !ok {
		return nil, fmt.Errorf("echo codec: %T is not *[]byte", v)
	}
	return *b, nil
}

// Unmarshal copies data to the []byte v points at.
func (Codec) Unmarshal(data []byte, v any) error {
	b, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("echo codec: %T is not *[]byte", v)
	}
	*b = append((*b)[:0], data...)
	return nil
}

// Name is the codec's content subtype (application/grpc+raw).
func (Codec) Name() string { return "raw" }
