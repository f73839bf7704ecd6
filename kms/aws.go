package kms

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"path"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	awskmsapi "github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/smithy-go"
	gcaws "gocloud.dev/aws"
	"gocloud.dev/gcerrors"
	"gocloud.dev/secrets"
	"gocloud.dev/secrets/awskms"
)

// AWS KMS decrypts a symmetric ciphertext with whichever key made it, if
// the caller may use that key, unless the request names the key. gocloud's
// awskms driver does not name it, so its keeper for key A opens DEKs
// sealed under key B: in a keyring of two AWS keys every DEK would seem to
// be under the primary already, rotate would move none, and retiring the
// old key would lose them all. Open therefore serves awskms:// URLs with
// awsKeeper below, which names its key in every Decrypt (a ciphertext of
// another key fails with IncorrectKeyException); URLs and credentials are
// as for gocloud's driver.

// openAWS opens an awskms:// URL as gocloud.dev/secrets/awskms does:
// awskms://KEY_ID or awskms:///ARN, context_NAME=VALUE parameters for the
// encryption context, and the AWS parameters of gocloud.dev/aws
// (region, profile, role, endpoint, ...).
func openAWS(ctx context.Context, u *url.URL) (*secrets.Keeper, error) {
	keyID := strings.TrimPrefix(path.Join(u.Host, u.Path), "/")
	if keyID == "" {
		return nil, errors.New("awskms: no key id in the URL")
	}
	q := u.Query()
	var encCtx map[string]string
	for k, vs := range q {
		name, ok := strings.CutPrefix(k, "context_")
		if !ok {
			continue
		}
		if len(vs) != 1 {
			return nil, fmt.Errorf("awskms: encryption context parameter %q must have exactly 1 value", k)
		}
		if encCtx == nil {
			encCtx = map[string]string{}
		}
		encCtx[name] = vs[0]
		q.Del(k)
	}
	cfg, err := gcaws.V2ConfigFromURLParams(ctx, q)
	if err != nil {
		return nil, fmt.Errorf("awskms: %w", err)
	}
	client, err := awskms.Dial(cfg)
	if err != nil {
		return nil, fmt.Errorf("awskms: %w", err)
	}
	return secrets.NewKeeper(&awsKeeper{client: client, keyID: keyID, encCtx: encCtx}), nil
}

// awsKeeper is a gocloud secrets driver for one AWS KMS key.
type awsKeeper struct {
	client *awskmsapi.Client
	keyID  string
	encCtx map[string]string
}

func (k *awsKeeper) Encrypt(ctx context.Context, plaintext []byte) ([]byte, error) {
	out, err := k.client.Encrypt(ctx, &awskmsapi.EncryptInput{
		KeyId:             aws.String(k.keyID),
		Plaintext:         plaintext,
		EncryptionContext: k.encCtx,
	})
	if err != nil {
		return nil, err
	}
	return out.CiphertextBlob, nil
}

func (k *awsKeeper) Decrypt(ctx context.Context, ciphertext []byte) ([]byte, error) {
	out, err := k.client.Decrypt(ctx, &awskmsapi.DecryptInput{
		KeyId:             aws.String(k.keyID),
		CiphertextBlob:    ciphertext,
		EncryptionContext: k.encCtx,
	})
	if err != nil {
		return nil, err
	}
	return out.Plaintext, nil
}

func (k *awsKeeper) Close() error { return nil }

func (k *awsKeeper) ErrorAs(err error, i any) bool { return errors.As(err, i) }

func (k *awsKeeper) ErrorCode(err error) gcerrors.ErrorCode {
	var ae smithy.APIError
	if !errors.As(err, &ae) {
		return gcerrors.Unknown
	}
	if c, ok := awsCodes[ae.ErrorCode()]; ok {
		return c
	}
	return gcerrors.Unknown
}

// awsCodes classifies AWS KMS errors: gocloud's table, plus the errors of
// a Decrypt that names its key, and throttling.
var awsCodes = map[string]gcerrors.ErrorCode{
	"IncorrectKeyException":       gcerrors.InvalidArgument, // the ciphertext is another key's
	"InvalidCiphertextException":  gcerrors.InvalidArgument,
	"InvalidKeyUsageException":    gcerrors.InvalidArgument,
	"NotFoundException":           gcerrors.NotFound,
	"KMSInternalException":        gcerrors.Internal,
	"KMSInvalidStateException":    gcerrors.FailedPrecondition,
	"DisabledException":           gcerrors.PermissionDenied,
	"InvalidGrantTokenException":  gcerrors.PermissionDenied,
	"AccessDeniedException":       gcerrors.PermissionDenied,
	"KeyUnavailableException":     gcerrors.ResourceExhausted,
	"ThrottlingException":         gcerrors.ResourceExhausted,
	"LimitExceededException":      gcerrors.ResourceExhausted,
	"DependencyTimeoutException":  gcerrors.DeadlineExceeded,
	"UnrecognizedClientException": gcerrors.PermissionDenied,
}
