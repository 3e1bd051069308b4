package ca

// gRPC methods rampartd serves on its TLS port besides Istio's
// IstioCertificateService. They reuse existing message types so that no private
// .proto is needed:
//
//   - BundleMethod: google.protobuf.Empty → google.protobuf.BytesValue holding the
//     SPIFFE bundle (JSON). Anyone may call it: the bundle is public.
//   - JWTSVIDMethod: spiffe.workload.JWTSVIDRequest → spiffe.workload.JWTSVIDResponse.
//     The caller must present its X.509-SVID; it gets a JWT-SVID for that identity.
const (
	RPCServiceName = "rampart.ca.v1.Identity"
	BundleMethod   = "/" + RPCServiceName + "/GetBundle"
	JWTSVIDMethod  = "/" + RPCServiceName + "/MintJWTSVID"
)
